"""The README stays short, keeps the lines CI reads, links only to what exists, and its Python example runs."""

import re
from pathlib import Path

from privtune.methods import config_classes

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _text() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_short_and_keeps_the_setup_and_test_commands():
    text = _text()
    assert len(text.splitlines()) <= 150
    # .ci/run runs exactly these two commands: the README must show them as they are
    assert "```bash\nbash scripts/setup.sh\n```" in text
    assert "```bash\npython -m pytest\n```" in text
    assert "(soon)" not in text


def test_method_table_lists_every_registered_method():
    rows = [line for line in _text().splitlines() if line.startswith("| `")]
    for cls in config_classes():
        name = cls.model_fields["name"].default
        assert any(line.startswith(f"| `{name}`") for line in rows), name
    bboxer = next(line for line in rows if line.startswith("| `bboxer`"))
    assert "not a privacy guarantee" in bboxer


def test_configs_named_in_the_readme_exist():
    named = set(re.findall(r"configs/[\w.]+\.yaml", _text()))
    assert named and not [c for c in named if not (REPO / c).is_file()]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_in_readme_and_docs_resolve():
    broken = []
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor:
                heads = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {_slug(h) for h in heads}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken


def test_python_example_runs(tmp_path, monkeypatch):
    """The README's ```python block, run as written from a directory that has the repository's configs/."""
    blocks = re.findall(r"```python\n(.*?)```", _text(), flags=re.S)
    assert len(blocks) == 1
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["result"]["steps"] == 20
    assert (tmp_path / "runs" / "api_demo" / "privacy.json").is_file()


def _readme_commands() -> list[list[str]]:
    """The `privtune ...` command lines of the README's bash blocks, split into words (comments dropped)."""
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", _text(), flags=re.S):
        for line in block.splitlines():
            if line.startswith("privtune "):
                out.append(shlex.split(line.split("  #")[0].split(" # ")[0]))
    return out


def test_readme_command_lines_name_real_commands_and_options():
    """Every `privtune` line of the README names a command the CLI has, with options that command takes."""
    import typer.main

    from privtune.cli import app

    group = typer.main.get_command(app)
    lines = _readme_commands()
    assert any(words[1] == "export" for words in lines) and any("--data" in words for words in lines)
    for words in lines:
        cmd, rest = group, words[1:]
        while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:  # privtune privacy convert ...
            cmd, rest = cmd.commands[rest[0]], rest[1:]
        assert not hasattr(cmd, "commands"), f"not a command: {' '.join(words)}"
        flags = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        unknown = [w for w in rest if w.startswith("-") and w not in flags]
        assert not unknown, f"{' '.join(words)}: {unknown}"
