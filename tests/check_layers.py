#!/usr/bin/env python3
"""Every #include in host/ points down the layers (docs/architecture.md), and plugins never include host/.

Layers, bottom up: the host's top-level files (failure, log, files, tensor_map); config/, dist/; data/, augment/,
plugins/; train/, eval/; run/; cli/. A folder may include its own files and any lower layer's, never a
sibling's on the same layer or one above. Prints each offending include and exits 1 if there is one."""
import pathlib
import re
import sys

LAYERS = {"": 0, "config": 1, "dist": 1, "data": 2, "augment": 2, "plugins": 2, "train": 3, "eval": 3, "run": 4, "cli": 5}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def offences(root: pathlib.Path):
    host = root / "host"
    for source in sorted(host.rglob("*.[ch]pp")):
        folder = source.parent.relative_to(host).as_posix()
        folder = "" if folder == "." else folder
        if source.name == "main.cpp" and folder == "":
            continue  # the executable sits above everything
        for included in INCLUDE.findall(source.read_text()):
            target = pathlib.PurePosixPath(included).parent.as_posix()
            target = "" if target == "." else target
            if target not in LAYERS or target == folder:
                continue
            if folder not in LAYERS:
                yield f"{source.relative_to(root)}: folder host/{folder} has no layer in check_layers.py"
            elif LAYERS[target] >= LAYERS[folder]:
                yield f"{source.relative_to(root)}: includes \"{included}\" (layer {LAYERS[target]}) from layer {LAYERS[folder]}"
    for source in sorted((root / "plugins").rglob("*.[ch]pp")):
        for included in INCLUDE.findall(source.read_text()):
            if pathlib.PurePosixPath(included).parts[0] in LAYERS or included.startswith("host/"):
                yield f"{source.relative_to(root)}: a plugin includes the host's \"{included}\""


def main() -> int:
    found = list(offences(pathlib.Path(sys.argv[1])))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
