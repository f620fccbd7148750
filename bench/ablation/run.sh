#!/usr/bin/env bash
# The ablation schedule behind bench/results/ABLATION_*_RESULTS.md (issue 7); resumable: finished runs and
# the calibration are reused, so phases can run in separate sittings. BUDGET = training seconds
# per arm and seed. Usage:
#   DATA=../shared/data BUDGET=300 [PHASES="calib seed0 roads seed1 report"] bench/ablation/run.sh [out/ablate]
# calib  every training arm's step rate, measured back to back (same machine conditions)
# seed0  single pass; K=1 box without distillation; K=1 box/mask/box+mask/points with
#        self-distillation; trained with K=2 (box + distillation); K=2/K=3 at inference on the
#        best K=1 model; U-Net
# roads  EPFL roads (fixed 64/16 split): SAM-SP (box + distillation), seeds 0 and 1
# seed1  seed 1 of single, sp_box, spsd_box, the best distilled prompt (validation Dice, seed 0),
#        K=2/K=3 at inference, U-Net
# recipe issue 17 on the fixed code: single, SAM-SP box, after promptable pre-training, each
#        with the detail branch (stride 2), seed 0, bf16 training (train.precision auto); plus
#        SAM-SP box trained in fp32 for the same number of steps (bf16 vs fp32 at equal steps).
#        TEST_LIMIT (default 80) test images; STEPS (default 1200, about the 300-s fp32 budget
#        of the seed0 arms on a quiet machine) optimizer steps for every arm.
# report aggregate everything finished; publish the BENCHMARKS.md sections and headline numbers
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
BUDGET=${BUDGET:-300}
PHASES=${PHASES:-calib seed0 roads seed1 report}
OUT=${1:-out/ablate}
# Passive OpenMP waits: spinning threads stall badly whenever anything else needs a core.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
DC="--data $DATA/deepcrack --budget-s $BUDGET --out $OUT/deepcrack"
RD="--dataset epfl --data $DATA/roads_epfl --budget-s $BUDGET --out $OUT/roads"
SEED0=single,sp_box,spsd_box,spsd_mask,spsd_boxmask,spsd_points,train_k2,infer_k2,infer_k3,unet
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has calib; then
    $PY bench/ablation/run.py $DC --arms single,sp_box,spsd_box,spsd_mask,spsd_boxmask,spsd_points,train_k2,unet \
        --calib-s 20 --calibrate-only
    $PY bench/ablation/run.py $RD --arms single,spsd_box --calib-s 20 --calibrate-only
fi
if has recipe; then
    RC="--data $DATA/deepcrack --budget-s $BUDGET --seeds 0 --test-limit ${TEST_LIMIT:-80}"
    RC="$RC --steps ${STEPS:-1200}"
    ARMS=${ARMS:-spsd_box,spsd_box_pp,spsd_box_detail,spsd_box_pp_detail,single}
    $PY bench/ablation/run.py $RC --out $OUT/recipe --arms $ARMS || true
    $PY bench/ablation/run.py $RC --out $OUT/recipe_fp32 --arms spsd_box \
        --train-set train.precision=fp32 || true
fi
has seed0 && { $PY bench/ablation/run.py $DC --arms $SEED0 --seeds 0 || true; }
has roads && { $PY bench/ablation/run.py $RD --arms spsd_box --seeds 0,1 || true; }
if has seed1; then
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
    $PY bench/ablation/run.py $DC --arms $SEED1,infer_k2,infer_k3,unet --seeds 1 || true
fi
if has report; then
    $PY bench/ablation/run.py $DC --arms $SEED0 --seeds 0,1 --report-only --publish
    $PY bench/ablation/run.py $RD --arms single,spsd_box --seeds 0,1 --report-only --publish
    $PY -m bench.merge_results
fi
