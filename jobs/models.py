"""The model bundles this machine can find, by name.

    python -m jobs.models             # one line per bundle in models/ and $SAMSP_MODELS
    python -m jobs.models NAME        # that bundle's bundle.json (NAME: a name, folder or URI)

Each line: name, model type, input size, passes K and self-prompt, output threshold (and
"small photos filled" for a bundle whose ``small_images`` is ``fill``), the input
contract in short ("contract unknown" for bundles written before it existed), the first line of
its MODEL_CARD.md, and where it is. Names resolve as ``--model NAME`` does for segment, sweep and
evaluate (``jobs.inference.bundle_meta.resolve_bundle``): ``<repo>/models`` first, then the
roots of ``$SAMSP_MODELS`` (local folders or s3:// prefixes, ``:`` or ``,`` separated); a name
found in two roots means the first, and the later one is listed as shadowed.
Reads JSON and Markdown only: no torch, no weights.

Exit codes: 0 done, 2 a NAME that is no bundle (the message says where it looked).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import storage  # noqa: E402
from jobs.inference.bundle_meta import (  # noqa: E402
    CARD_FILE,
    MODELS_ENV,
    describe_input,
    find_bundles,
    model_roots,
    read_bundle_json,
    resolve_bundle,
)


def card_line(uri: str, name: str) -> str:
    """The first non-empty line of the bundle's MODEL_CARD.md, heading marks and a leading
    repeat of the name dropped; "" when it has no card."""
    try:
        text = storage.read_bytes(storage.join(uri, CARD_FILE)).decode("utf-8", "replace")
    except (FileNotFoundError, OSError):
        return ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.lstrip("#").strip()
    for dash in (" — ", " -- ", " - ", ": "):
        if line.startswith(name + dash):
            return line[len(name + dash):]
    return line


def bundle_line(entry: dict) -> str:
    """One listing line for a ``find_bundles`` entry."""
    if "error" in entry:
        return f"(root {entry['root']} unreadable: {entry['error']})"
    name, uri = entry["name"], entry["uri"]
    try:
        meta = read_bundle_json(uri)
        threshold = f"threshold {meta.get('threshold', 0.5):g}"
        if meta.get("prompt_threshold") is not None:
            threshold += f" (self-prompts {meta['prompt_threshold']:g})"
        if meta.get("small_images") == "fill":  # pad, the rule of older bundles, goes unsaid
            threshold += ", small photos filled"
        fields = [name, f"{meta.get('model_type')} {meta.get('image_size')}px",
                  f"K={meta.get('iterations')} {meta.get('prompt')}", threshold,
                  describe_input(meta.get("input"))]
    except ValueError as err:
        fields = [name, f"unreadable: {err}"]
    card = card_line(uri, name)
    shadowed = " (shadowed: the name means an earlier one)" if entry["shadowed"] else ""
    return " | ".join(fields + ([card] if card else [])) + f" | {uri}{shadowed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.models",
        description="List the model bundles in models/ and $SAMSP_MODELS, or print one's "
                    "bundle.json.")
    parser.add_argument("name", nargs="?",
                        help="a bundle name, folder or URI: print its bundle.json")
    args = parser.parse_args(argv)
    if args.name:
        try:
            print(json.dumps(read_bundle_json(resolve_bundle(args.name)), indent=2))
        except ValueError as err:  # BundleNotFoundError included
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    entries = find_bundles()
    for entry in entries:
        print(bundle_line(entry))
    if not entries:
        print(f"no bundles in {', '.join(model_roots())} (add roots to ${MODELS_ENV})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
