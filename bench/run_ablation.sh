#!/usr/bin/env bash
# The ablation schedule behind bench/ABLATION_RESULTS.md (issue 7), resumable (finished runs are
# reused). BUDGET = training seconds per arm and seed. Usage:
#   DATA=../shared/data BUDGET=300 bench/run_ablation.sh [out/ablate]
# 1. calibrate every training arm's step rate back to back (same machine conditions);
# 2. seed 0: single pass, K=1 with each prompt (box without distillation; box/mask/box+mask/points
#    with self-distillation), K=2/K=3 at inference, U-Net;
# 3. EPFL roads (fixed split): single pass and SAM-SP (box + distillation), seed 0;
# 4. seed 1 of the main arms plus the best distilled prompt (chosen on validation Dice);
# 5. one report over everything that finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
BUDGET=${BUDGET:-300}
OUT=${1:-out/ablate}
DC="--data $DATA/deepcrack --budget-s $BUDGET --out $OUT/deepcrack"
RD="--dataset epfl --data $DATA/roads_epfl --budget-s $BUDGET --out $OUT/roads"
SEED0=single,sp_box,spsd_box,spsd_mask,spsd_boxmask,spsd_points,infer_k2,infer_k3,unet
$PY bench/ablate.py $DC --arms single,sp_box,spsd_box,spsd_mask,spsd_boxmask,spsd_points,unet \
    --calib-s 20 --calibrate-only
$PY bench/ablate.py $RD --arms single,spsd_box --calib-s 20 --calibrate-only
$PY bench/ablate.py $DC --arms $SEED0 --seeds 0 || true
$PY bench/ablate.py $RD --arms single,spsd_box --seeds 0 || true
BEST=$($PY - "$OUT/deepcrack" <<'PYEOF'
import json, sys
from pathlib import Path
runs = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("runs/spsd_*-s0/result.json")]
runs = [r for r in runs if r.get("val_dice") is not None]
print(max(runs, key=lambda r: r["val_dice"])["arm"] if runs else "spsd_box")
PYEOF
)
echo "best distilled prompt on validation (seed 0): $BEST"
SEED1=single,sp_box,spsd_box
[ "$BEST" != spsd_box ] && SEED1=$SEED1,$BEST
$PY bench/ablate.py $DC --arms $SEED1,infer_k2,infer_k3,unet --seeds 1 || true
$PY bench/ablate.py $DC --arms $SEED0 --seeds 0,1 --report-only --publish
$PY bench/ablate.py $RD --arms single,spsd_box --seeds 0,1 --report-only --publish
$PY -m bench.merge_results
