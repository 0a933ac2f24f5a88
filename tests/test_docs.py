"""The docs stay true: every `gsil-bench` command line shown in a fenced block of README.md or
docs/*.md parses with the real command-line parser (a removed or renamed flag fails here), its
config and `KEY=VALUE` overrides pass the schema, and `run` on a config that validates offline
(the embedded model, local data) runs as `--dry-run`, so a broken example fails here; every module,
function and file the docs cite exists."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from gsil_bench.core.config import ExperimentConfig
from gsil_bench.core.loading import load_experiment
from gsil_bench.harness import cli
from gsil_bench.harness.commands import eval as eval_cmd

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAYERS = ("core", "harness", "trainers", "tasks", "reports")
START = re.compile(r"(?:^|[\s;&|(])(?:gsil-bench|-m gsil_bench\.harness\.cli)\s+")
END = re.compile(r"\s*(?:&&|\|\||;|\||>>|>|')\s*")


def fenced_commands(docs: list[Path] = DOCS) -> list[tuple[str, list[str]]]:
    """(file:line, the arguments after `gsil-bench`) for each command in a fenced block."""
    found = []
    for doc in docs:
        text = doc.read_text()
        for block in re.finditer(r"^```[\w-]*\n(.*?)^```", text, re.S | re.M):
            first = text.count("\n", 0, block.start(1)) + 1
            for k, line in _joined(block.group(1)):
                if line.lstrip().startswith("#"):
                    continue
                for m in START.finditer(line):
                    rest = END.split(line[m.end():])[0]
                    argv = [("runs/x" if a.startswith("$") else a) for a in shlex.split(rest, comments=True)]
                    found.append((f"{_name(doc)}:{first + k}", argv))
    return found


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else doc.name


def _joined(block: str) -> list[tuple[int, str]]:
    """(line offset of its first line, text) for each command, backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for k, line in enumerate(block.splitlines()):
        start, text = pending if pending else (k, "")
        text += " " + line.rstrip("\\")
        pending = (start, text) if line.endswith("\\") else None
        if pending is None:
            out.append((start, text.strip()))
    return out


COMMANDS = fenced_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10
    assert {argv[0] for _, argv in COMMANDS} >= {"run", "eval", "compare", "report"}


def offline(cfg: ExperimentConfig) -> bool:
    """A config that validates without the Hub: the embedded model and local training data."""
    data = [d for d in (cfg.shared.train_data, cfg.shared.preference_data) if d is not None]
    return cfg.shared.model.startswith("embedded:") and not any(d.path.startswith("hf:") for d in data)


def check_command(where: str, argv: list[str], data_dir: Path) -> str:
    """What the docs test does with one documented command: it parses, its config and overrides pass
    the schema, and a `run` of an offline config runs as `--dry-run` (exit 0). Returns what was done;
    raises AssertionError naming `where` when the command is broken."""
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as err:
        raise AssertionError(f"{where}: `gsil-bench {' '.join(argv)}` does not parse (exit {err.code})") from None
    if args.command == "eval":
        eval_cmd.eval_config(args)  # the flags and the KEY=VALUE overrides build an evaluation config
        return "parsed, eval config built"
    if args.command not in ("run", "train"):
        return "parsed"
    cfg = load_experiment(args.config, args.overrides)
    if args.command != "run" or not offline(cfg):
        return "parsed, schema checked"
    key = (tuple(argv), str(data_dir))
    if key not in _DRY_RUNS:  # the same command shown twice is dry-run once
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            _DRY_RUNS[key] = (cli.main([*argv, "--dry-run", "--data-dir", str(data_dir)]), out.getvalue())
    code, text = _DRY_RUNS[key]
    assert code == 0, f"{where}: `gsil-bench {' '.join(argv)} --dry-run` exits {code}: {text.strip()[-600:]}"
    return "parsed, dry run"


_DRY_RUNS: dict[tuple[tuple[str, ...], str], tuple[int, str]] = {}


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses_and_its_config_validates(where, argv, data_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    check_command(where, argv, data_dir)


def test_every_documented_offline_run_is_dry_run(data_dir, monkeypatch):
    """The `run` commands on the configs that validate offline (smoke, nightly, ablation-b) really run
    as `--dry-run`: the old check compared the parsed Path with strings and dry-ran none of them."""
    monkeypatch.chdir(REPO)
    done = {where: check_command(where, argv, data_dir) for where, argv in COMMANDS if argv[0] == "run"}
    dry = [w for w, what in done.items() if what == "parsed, dry run"]
    configs = {Path(argv[1]).stem for where, argv in COMMANDS if where in dry}
    assert configs >= {"smoke", "nightly", "ablation-b"}, done


@pytest.mark.parametrize("broken", [
    "gsil-bench run configs/smoke.yaml shared.eval.tasks=[gsm8kk]",  # schema-valid, fails the validation pass
    "gsil-bench run configs/smoke.yaml methods.gsil-logistic.params.a=-1",  # a loss parameter's guard
    "gsil-bench run configs/smoke.yaml shared.train_data.path=gsm8k/missing.jsonl",  # a data file
])
def test_a_broken_documented_run_fails_the_docs_test(broken, tmp_path, data_dir, monkeypatch):
    """A documented command that parses and passes the schema but fails `run --dry-run` fails the test."""
    monkeypatch.chdir(REPO)
    doc = tmp_path / "broken.md"
    doc.write_text(f"```bash\n{broken}\n```\n")
    (where, argv), = fenced_commands([doc])
    with pytest.raises(AssertionError, match=r"broken.md:2: .* --dry-run` exits 2"):
        check_command(where, argv, data_dir)


BENCH = re.compile(r"python -m (benchmarks\.(?:training|generation))((?: --?[\w-]+(?: [\w.-]+)*)*)")


def benchmark_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, module, arguments) for each `python -m benchmarks.training|generation ...` in the docs."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BENCH.finditer(text):
            if not text[m.end():].startswith(" <"):  # a placeholder (`--models <shape>`) is not a command
                out.append((str(doc.relative_to(REPO)), m.group(1), shlex.split(m.group(2))))
    return out


BENCHES = benchmark_commands()


@pytest.mark.parametrize("doc,module,argv", BENCHES, ids=[f"{d}:{m} {' '.join(a)}" for d, m, a in BENCHES])
def test_a_documented_benchmark_command_parses(doc, module, argv, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ runs from a checkout, not installed
    try:
        importlib.import_module(module).parse_args(argv)
    except SystemExit as err:
        raise AssertionError(f"{doc}: `python -m {module} {' '.join(argv)}` does not parse (exit {err.code})") from None


def _resolves(dotted: str) -> bool:
    """A module path, optionally followed by attributes: `core.strict.build`, `gsil_bench.tasks.api`."""
    parts = dotted.removeprefix("gsil_bench.").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("gsil_bench." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def cited() -> list[tuple[str, str]]:
    """(doc, name) for every module path and repository file the docs cite in backticks or links."""
    dotted = re.compile(rf"^(?:gsil_bench\.)?(?:{'|'.join(LAYERS)})(?:\.\w+)+$")
    files = re.compile(rf"^(?:{'|'.join(LAYERS)}|tests|configs|benchmarks|docs)/[\w./-]+\.(?:py|yaml|md|sh)$")
    out = []
    for doc in DOCS:
        text = doc.read_text()
        spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)#\s]+)\)", text)
        spans += re.findall(r"-m ((?:gsil_bench|benchmarks)\.[\w.]+)", text)
        for span in spans:
            name = re.sub(r"\(.*\)$", "", span.strip())
            if dotted.match(name) or name.startswith("benchmarks.") or files.match(name):
                out.append((str(doc.relative_to(REPO)), name))
        out += [(str(doc.relative_to(REPO)), n) for n in _section_modules(text)]
    return sorted(set(out))


def _section_modules(text: str) -> list[str]:
    """The modules a `### <layer>` section lists, one per bullet: "- `registry.Registry`: ..."."""
    out, layer = [], None
    for line in text.splitlines():
        if line.startswith("#"):
            head = line.lstrip("#").strip()
            layer = head if line.startswith("### ") and head in LAYERS else None
        elif layer and (m := re.match(r"- `([\w.]+)(?:\(.*?\))?`", line)):
            out.append(f"{layer}.{m.group(1)}")
    return out


CITED = cited()


def test_the_docs_cite_modules_and_files():
    assert len(CITED) >= 50
    assert ("docs/architecture.md", "core.errors") in CITED


@pytest.mark.parametrize("doc,name", CITED, ids=[f"{d}:{n}" for d, n in CITED])
def test_what_the_docs_cite_exists(doc, name):
    if "/" in name:
        assert (REPO / name).exists() or (REPO / "docs" / name).exists(), f"{doc} cites {name}: no such file"
    elif name.startswith("benchmarks."):
        assert (REPO / (name.replace(".", "/") + ".py")).is_file(), f"{doc} cites {name}: no such module"
    else:
        assert _resolves(name), f"{doc} cites {name}: no such module or attribute"


def test_nothing_cites_a_file_outside_the_repository():
    """Method notes and specs the code and tests are written from live in docs/ (e.g. docs/methods.md)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py", "*.md", "*.yaml"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"/work/|\.\./shared/METHODS|(?<![\w/])METHODS\.md")
    assert [f"{f}:{n}" for f in files for n, line in enumerate((REPO / f).read_text().splitlines(), 1)
            if outside.search(line) and f != "tests/test_docs.py"] == []
