"""Generated docs stay in step with the code they describe."""

from pathlib import Path

from vnode.provider.translate import all_forbidden_flags

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_forbidden_flags_doc_lists_every_refused_flag():
    text = (DOCS / "forbidden-flags.md").read_text()
    missing = [flag for flag in all_forbidden_flags() if f"| `{flag}` |" not in text]
    assert not missing, f"regenerate docs/forbidden-flags.md; missing {missing}"
