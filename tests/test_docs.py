"""The README and the pages under docs/ stay in step with the files and the flags: every relative link resolves, and
every ``python main.py <subcommand> ...`` command shown in a fenced code block parses.

The commands are checked with ``--print_config``: the parser reads the config file and every flag, then prints the
resolved configuration and exits 0, before any model, data or checkpoint is opened. So a wrong flag, a value of the
wrong type or a config file that is gone fails, while paths that exist only on a user's machine (the full corpus,
``posts.csv``, ``last``) do not. All the commands run in ONE helper process (importing Lightning costs seconds a
process), which calls ``weibo_sentiment.cli.main(args)`` for each and reports its exit status and stderr.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SUBCOMMANDS = ("fit", "validate", "test", "predict", "export")
SHELL_OPERATORS = ("&&", "||", "|", ";")

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target); the text may hold one level of brackets and span lines.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> str:
    """The text outside code: fenced blocks and inline code spans blanked (their newlines kept for line numbers)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE_CODE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link that points inside the repository: not http(s), mailto or a pure #anchor."""
    text = prose(page.read_text(encoding="utf-8"))
    links = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"(https?|mailto):", target, re.I) or target.startswith("#"):
            continue
        links.append((text.count("\n", 0, match.start()) + 1, target))
    return links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(prose(page.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def test_the_pages_exist() -> None:
    assert len(PAGES) >= 10, [rel(p) for p in PAGES]
    readme_links = {target.split("#")[0] for _, target in relative_links(REPO / "README.md")}
    missing = [rel(page) for page in PAGES[1:] if rel(page) not in readme_links]
    assert not missing, f"docs pages the README does not link to: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page: Path) -> None:
    links = relative_links(page)
    broken = [f"{rel(page)}:{line}: {target}" for line, target in links
              if not (page.parent / target.split("#")[0]).exists()]  # fmt: skip
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


@pytest.mark.e2e
@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_anchor_names_a_heading(page: Path) -> None:
    """``page.md#section`` and ``#section``: the section is a heading of that page (GitHub's anchors)."""
    text = prose(page.read_text(encoding="utf-8"))
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"(https?|mailto):", target, re.I) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        file = (page.parent / path) if path else page
        if file.suffix == ".md" and file.is_file() and anchor not in anchors(file):
            broken.append(f"{rel(page)}:{text.count(chr(10), 0, match.start()) + 1}: {target}")
    assert not broken, "anchors that name no heading:\n" + "\n".join(broken)


# ---- the commands -------------------------------------------------------------------------------------------------


class Command(NamedTuple):
    where: str  # page:line
    text: str  # as shown, continuation lines joined
    args: list[str]  # what follows main.py


# Placeholders a reader replaces with a path of their own. A shell would read `<best.ckpt>`'s brackets as redirections,
# so the parser gets a plain path, as a user would type it (it accepts the placeholder as written too: --print_config
# opens no checkpoint). Other placeholders go to the parser as written.
PLACEHOLDERS = {"<best.ckpt>": "best.ckpt"}


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the block's first line, body) of each fenced code block."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(0).split("\n", 1)[1].rsplit("```", 1)[0])
            for m in FENCE.finditer(text)]  # fmt: skip


def main_py_commands(page: Path) -> tuple[list[Command], list[str]]:
    """The ``main.py <subcommand>`` commands of a page's code blocks, and those skipped (shell constructs)."""
    commands, skipped = [], []
    for start, body in code_blocks(page.read_text(encoding="utf-8")):
        lines = body.split("\n")
        i = 0
        while i < len(lines):
            first, logical = i, lines[i]
            while logical.endswith("\\") and i + 1 < len(lines):  # a continued line
                i += 1
                logical = logical[:-1] + " " + lines[i].strip()
            i += 1
            if "main.py" not in logical:
                continue
            where = f"{rel(page)}:{start + first}"
            if "$(" in logical or "`" in logical:
                skipped.append(f"{where}: {logical}")
                continue
            text = logical
            for placeholder, value in PLACEHOLDERS.items():
                text = text.replace(placeholder, value)
            lexer = shlex.shlex(text, posix=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            tokens = list(lexer)
            segments: list[list[str]] = [[]]
            for token in tokens:
                if token in SHELL_OPERATORS:
                    segments.append([])
                else:
                    segments[-1].append(token)
            for segment in segments:  # e.g. `echo ... | python main.py predict ...`, `torchrun ... main.py fit ...`
                at = next((n for n, token in enumerate(segment) if token.endswith("main.py")), None)
                if at is None or at + 1 >= len(segment) or segment[at + 1] not in SUBCOMMANDS:
                    continue
                args = segment[at + 1 :]
                if any("$" in arg for arg in args):
                    skipped.append(f"{where}: {logical}")
                    continue
                commands.append(Command(where, logical.strip(), args))
    return commands, skipped


COMMANDS: list[Command] = []
SKIPPED: list[str] = []
for _page in PAGES:
    _found, _skipped = main_py_commands(_page)
    COMMANDS += _found
    SKIPPED += _skipped

HELPER = r"""
import contextlib, io, json, sys
commands_file, results_file = sys.argv[1:3]
sys.argv = ["main.py"]
from weibo_sentiment.cli import main

results = []
for args in json.load(open(commands_file, encoding="utf-8")):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args + ["--print_config"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException as exc:
            code, err = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
    results.append({"code": code, "stderr": err.getvalue()})
with open(results_file, "w", encoding="utf-8") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Every command through the parser, in one process, from a folder laid out as a clone (configs/, assets/,
    data/ linked) so that nothing can be written into the repository."""
    folder = tmp_path_factory.mktemp("docs-commands")
    for name in ("configs", "assets", "data", "tools"):
        (folder / name).symlink_to(REPO / name)
    commands_file, results_file = folder / "commands.json", folder / "results.json"
    commands_file.write_text(json.dumps([command.args for command in COMMANDS]), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", HELPER, str(commands_file), str(results_file)], cwd=folder,
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(enumerate(json.loads(results_file.read_text(encoding="utf-8"))))


def test_the_commands_are_found() -> None:
    """The extraction itself: the quickstart, the real model, the databases, export and DDP are all there."""
    subcommands = {command.args[0] for command in COMMANDS}
    assert subcommands == set(SUBCOMMANDS), subcommands
    assert len(COMMANDS) >= 15, ([command.where for command in COMMANDS], "skipped (shell constructs):", SKIPPED)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{c.where} {c.args[0]}" for c in COMMANDS])
def test_the_command_parses(index: int, parsed: dict[int, dict]) -> None:
    command, result = COMMANDS[index], parsed[index]
    stderr = result["stderr"]
    error = stderr[stderr.find("error:"):] if "error:" in stderr else stderr  # without the usage block before it
    assert result["code"] == 0, f"{command.where}: {command.text}\nexit {result['code']}: {error[-2000:]}"
