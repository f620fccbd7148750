"""bench/oracle_prompts.py: pass 1 prompted by the ground truth, beside the self-prompt."""
import numpy as np
import pytest

from bench import oracle_prompts as op


@pytest.fixture(scope="module")
def micro_bundle(tmp_path_factory):
    import torch

    import samsp

    torch.manual_seed(0)
    model = samsp.SamSP(samsp.build_sam("vit_micro"), iterations=1, prompt="box")
    uri = str(tmp_path_factory.mktemp("bundle") / "micro")
    samsp.save_bundle(model, uri, {"threshold": 0.5})
    return samsp.load_bundle(uri)


def test_forward_stacks_pass0_and_every_prompt_source(micro_bundle):
    s = micro_bundle.meta.image_size
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (2, 4, s, s)).astype(np.float32)
    tiles[:, 3] = 0
    tiles[0, 3, 10:20, 5:45] = 1  # a 10 x 40 px ground-truth box in tile 0; tile 1 is empty
    fractions = []
    out = op.oracle_forward(micro_bundle, precision="fp32", box_fractions=fractions)(tiles, None)
    assert out.shape == (1 + len(op.SOURCES), 2, s, s)
    assert np.all((out >= 0) & (out <= 1))
    # Only windows holding foreground count, and the share is that box's own area.
    assert fractions == [pytest.approx(10 * 40 / s ** 2)]
    self_p1, gt_box, gt_mask = out[1], out[2], out[3]
    # A ground-truth prompt reaches the decoder: pass 1 differs from the self-prompted one.
    assert not np.allclose(gt_mask[0], self_p1[0])
    assert not np.allclose(gt_box[0], self_p1[0])


def test_tiles_must_match_the_model_input(micro_bundle):
    s = micro_bundle.meta.image_size
    with pytest.raises(SystemExit, match="input size"):
        op.oracle_forward(micro_bundle, precision="fp32")(np.zeros((1, 4, s // 2, s // 2), "f4"),
                                                           None)
