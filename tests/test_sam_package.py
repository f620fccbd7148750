"""samsp loads SAM's modeling code without segment_anything's package __init__ (which imports
torchvision and torch._dynamo, ~1.8 s per process: every Ray actor pays it), and the package
still behaves normally for code that wants the rest of it."""
import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_samsp_does_not_import_torchvision_or_dynamo():
    # nor does loading a small model (the meta device would import torch._dynamo: ~1.5 s)
    assert _run("""
        import sys
        import samsp.predict
        from samsp import build_sam, build_sam_from_config, get_config
        state = build_sam("vit_micro").state_dict()
        build_sam_from_config(get_config("vit_micro"), state_dict=state)
        print(sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules))
    """) == "[]"


def test_package_body_runs_on_first_use():
    assert _run("""
        import samsp
        import segment_anything
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        from segment_anything.modeling import Sam
        assert segment_anything.SamPredictor.__name__ == "SamPredictor"
        assert callable(sam_model_registry["vit_b"])
        assert samsp.SamSP  # samsp's own classes still work with the full package
        try:
            segment_anything.no_such_name
        except AttributeError as e:
            print("AttributeError", "no_such_name" in str(e))
    """) == "AttributeError True"


def test_already_imported_package_is_left_alone():
    assert _run("""
        import sys
        import segment_anything
        from samsp.sam_package import defer_package_init
        before = sys.modules["segment_anything"]
        print(defer_package_init(), sys.modules["segment_anything"] is before,
              defer_package_init("no_such_package_here"))
    """) == "False True False"
