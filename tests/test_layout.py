"""The package's layout: no import circle, no function-local imports of the package's own
modules, the flat module paths as aliases, and one data-format registry behind the CLI."""

import ast
import importlib
import os
import sys

import pytest

from samtone_tf import _compat
from samtone_tf.data import formats

pytestmark = pytest.mark.keras_independent

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "samtone_tf")


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.join(PACKAGE, "..")).replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[:-len(".__init__")]
                found[dotted] = path
    return found


def _imports(module, path, modules):
    """``[(imported module, function-local?)]`` of the package's own modules."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    top_level = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != module:
                out.append((target, id(node) not in top_level))
    return out


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle_and_no_function_local_package_imports():
    modules = _modules()
    assert {"samtone_tf.towers.model", "samtone_tf.data.formats", "samtone_tf.cli"} <= set(modules)
    edges, local = {}, []
    for module, path in modules.items():
        found = _imports(module, path, modules)
        edges[module] = {target for target, _ in found}
        local += [f"{module} -> {target}" for target, is_local in found if is_local]
    assert _cycles(edges) == []
    assert local == []
    # the checker sees a circle where there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("old,new", sorted(_compat.MOVED_MODULES.items()))
def test_flat_module_paths_are_the_moved_modules(old, new):
    moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)
    assert sys.modules[old] is moved and moved.__name__ == new
    assert moved.__spec__.name == new  # the module keeps its own spec


def test_old_names_still_import():
    from samtone_tf.evaluation import dual_encoder_fns, load_eval_data
    from samtone_tf.model import DualEncoder
    from samtone_tf.pretrained import load_pretrained
    from samtone_tf.retrieval import encode_corpus, search
    from samtone_tf.towers import embedders
    from samtone_tf.training import TrainConfig

    import samtone_tf

    assert DualEncoder is samtone_tf.DualEncoder
    assert dual_encoder_fns is embedders.dual_encoder_fns
    assert encode_corpus is embedders.encode_corpus and callable(search)
    assert TrainConfig.__module__ == "samtone_tf.training.run"
    assert callable(load_eval_data) and callable(load_pretrained)
    with pytest.raises(AttributeError):
        import samtone_tf.training as training

        training.no_such_name  # noqa: B018


def test_a_registered_format_reaches_the_loaders_and_the_cli(tmp_path):
    from samtone_tf import cli

    path = tmp_path / "pairs.tsv"
    path.write_text("q1\twhat is x\td1\tx is y\n", encoding="utf-8")
    calls = []

    def load(source, split, *, dev_fraction, seed):
        calls.append((source, split))
        rows = [line.split("\t") for line in open(source, encoding="utf-8").read().splitlines()]
        return ({r[2]: r[3] for r in rows}, {r[0]: r[1] for r in rows},
                {r[0]: {r[2]: 1} for r in rows})

    fmt = formats.DataFormat(name="tsv-pairs", path_kind="file", load=load, splits=("all",),
                             default_split="all", train_split="all", heldout_split="all",
                             whole_split="all", expects="a TSV file of qid, query, did, doc")
    formats.register_format(fmt)
    try:
        assert "tsv-pairs" in formats.format_names()
        corpus, queries, qrels = formats.load_data(str(path), "tsv-pairs")
        assert (corpus, queries, qrels) == ({"d1": "x is y"}, {"q1": "what is x"},
                                            {"q1": {"d1": 1}})
        assert calls == [(str(path), "all")]
        with pytest.raises(ValueError, match="--split for --format tsv-pairs must be one of"):
            formats.load_data(str(path), "tsv-pairs", "dev")
        with pytest.raises(ValueError, match="expects a TSV file .* got the folder"):
            formats.load_data(str(tmp_path), "tsv-pairs")
        args = cli.build_parser().parse_args(
            ["evaluate", "--model", "pretrained:minilm-l6", "--data", str(path), "--format",
             "tsv-pairs"])
        assert args.format == "tsv-pairs" and cli._split(args) == "all"
    finally:
        formats._REGISTRY.pop("tsv-pairs")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["evaluate", "--model", "m", "--data", str(path),
                                       "--format", "tsv-pairs"])
    assert formats.format_names() == ("beir", "squad")
    with pytest.raises(ValueError, match="`format` must be one of"):
        formats.get_format("csv")
