"""Inputs/outputs tables of terraform/modules/*/README.md, generated from the modules.

`python3 tests/terraform/readme_tables.py` rewrites everything from "## Inputs" to the end of
each module's README; test_terraform.py checks that the committed READMEs match.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hcl2

MODULES = Path(__file__).resolve().parents[2] / "terraform" / "modules"


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {k: _unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


def _type(value: str) -> str:
    value = str(value)
    return value[2:-1] if value.startswith("${") and value.endswith("}") else value


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _blocks(module: Path, kind: str):
    for tf in sorted(module.glob("*.tf")):
        with tf.open() as handle:
            for entry in hcl2.load(handle).get(kind, []):
                for label, body in entry.items():
                    if not label.startswith("__"):
                        yield _unquote(label), body


def render(module: Path) -> str:
    lines = ["## Inputs", "", "| Name | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, body in _blocks(module, "variable"):
        default = "required" if "default" not in body else f"`{json.dumps(_unquote(body['default']))}`"
        type_ = _type(body["type"]).replace("|", "\\|")
        default = default.replace("|", "\\|")
        lines.append(f"| `{name}` | `{type_}` | {default} | {_cell(_unquote(body['description']))} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "| --- | --- |"]
    for name, body in _blocks(module, "output"):
        sensitive = " (sensitive)" if body.get("sensitive") is True else ""
        lines.append(f"| `{name}` | {_cell(_unquote(body['description']))}{sensitive} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    for module in sorted(p for p in MODULES.iterdir() if p.is_dir()):
        readme = module / "README.md"
        head = readme.read_text().split("## Inputs", 1)[0]
        readme.write_text(head + render(module))
        print(f"wrote {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
