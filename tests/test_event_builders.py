"""smpsim/model/events.py is the only statement of each event's layout: every emission site calls its
builder with exactly the builder's parameters, by keyword; no code builds an event tuple by hand; and each
builder returns its parameters in order, which to_record / from_record carry through a trace unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from smpsim.model import events

# The checkout's sources (a compiled module's __file__ may not point at its source).
PACKAGE = Path(__file__).resolve().parents[1] / "smpsim"
EVENTS_SOURCE = PACKAGE / "model" / "events.py"
COMMON = ("t", "cpu")  # every builder's first parameters, before the event's own fields


def _sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)[:100]}"


def _builder_defs() -> dict[str, ast.FunctionDef]:
    """events.py's functions whose parameters start with the keyword-only t and cpu: the builders."""
    tree = ast.parse(EVENTS_SOURCE.read_text())
    return {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)
            and tuple(a.arg for a in f.args.kwonlyargs[:2]) == COMMON}


def _hand_built(node: ast.AST) -> bool:
    """A tuple or list literal laid out like an event: (t, cpu, "<event type>", ...), t and cpu not strings."""
    if not isinstance(node, (ast.Tuple, ast.List)) or len(node.elts) < 3:
        return False
    first, second, ev = node.elts[:3]
    is_str = [isinstance(e, ast.Constant) and isinstance(e.value, str) for e in (first, second)]
    return isinstance(ev, ast.Constant) and ev.value in events.FIELDS and not any(is_str)


def _event_lists(fn: ast.AST) -> set[str]:
    """Names in one function that hold the model's event list: self.events and locals bound to it."""
    out = {"self.events"}
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and ast.unparse(n.value) == "self.events":
            out |= {ast.unparse(t) for t in n.targets}
    return out


def _builder_aliases(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """How a module reaches the builders: names bound to the events module, and builders imported by name."""
    modules, names = set(), {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module == "smpsim.model":
            modules |= {a.asname or a.name for a in n.names if a.name == "events"}
        elif isinstance(n, ast.ImportFrom) and n.module == "smpsim.model.events":
            names |= {a.asname or a.name: a.name for a in n.names if a.name in events.FIELDS}
        elif isinstance(n, ast.Import):
            modules |= {a.asname for a in n.names if a.name == "smpsim.model.events" and a.asname}
    return modules, names


def _builder_calls(tree: ast.Module) -> list[tuple[str, ast.Call]]:
    modules, names = _builder_aliases(tree)
    calls = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
            calls.append((f.attr, n))
        elif isinstance(f, ast.Name) and f.id in names:
            calls.append((names[f.id], n))
    return calls


def test_no_event_tuple_is_built_by_hand():
    found = [_where(p, n) for p, tree in _sources().items() if p != EVENTS_SOURCE
             for n in ast.walk(tree) if _hand_built(n)]
    assert not found, "event tuples built by hand; call the builder in smpsim/model/events.py:\n" + "\n".join(found)


def test_the_model_appends_only_built_events():
    bad, appends = [], 0
    for p in (PACKAGE / "model" / "cpu.py", PACKAGE / "model" / "coordinator.py"):
        tree = ast.parse(p.read_text())
        built = {id(c) for _, c in _builder_calls(tree)}
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            lists = _event_lists(fn)
            for n in ast.walk(fn):
                if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "append"
                        and ast.unparse(n.func.value) in lists):
                    appends += 1
                    if len(n.args) != 1 or id(n.args[0]) not in built:
                        bad.append(_where(p, n))
    assert appends >= len(events.FIELDS)  # the scan sees the emission sites
    assert not bad, "events appended that no builder made:\n" + "\n".join(bad)


def test_every_builder_call_names_exactly_its_fields():
    bad, called = [], set()
    for p, tree in _sources().items():
        for name, call in _builder_calls(tree):
            if name not in events.FIELDS:
                bad.append(f"{_where(p, call)}: no event type {name!r}")
                continue
            called.add(name)
            given = [k.arg for k in call.keywords]
            want = [*COMMON, *events.FIELDS[name]]
            if call.args or None in given or sorted(given) != sorted(want):
                bad.append(f"{_where(p, call)}: give exactly {', '.join(want)}, by keyword")
    assert not bad, "builder calls that do not match events.py:\n" + "\n".join(bad)
    assert called == set(events.FIELDS), f"event types the model never emits: {set(events.FIELDS) - called}"


def test_fields_are_the_builders_parameters():
    defs = _builder_defs()
    assert [b.__name__ for b in events.BUILDERS] == list(defs), "BUILDERS must list every builder of events.py"
    assert events.EVENT_TYPES == tuple(defs)
    for name, fn in defs.items():
        params = [a.arg for a in fn.args.kwonlyargs]
        assert not fn.args.args and not fn.args.vararg and not fn.args.kwarg, f"{name}: keyword-only parameters"
        assert events.FIELDS[name] == tuple(params[len(COMMON):])
        # The body is the parameters in order, the type's name third: the signature is the layout.
        (ret,) = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
        assert isinstance(ret.value, ast.Tuple), f"{name} must return a tuple literal"
        items = [e.id if isinstance(e, ast.Name) else e.value for e in ret.value.elts]
        assert items == [*COMMON, name, *params[len(COMMON):]], f"{name} returns its fields out of order"


def _sample(annotation: str, i: int, none: bool) -> object:
    """A value of the annotated type, distinct per parameter i (None for an optional one when asked)."""
    if none and annotation.endswith("| None"):
        return None
    return {"bool": i % 2 == 0, "str": f"s{i}", "list[int]": [i, i + 1]}.get(annotation.removesuffix(" | None"),
                                                                        1000 + i)


@pytest.mark.parametrize("none", [False, True], ids=["all-set", "optional-null"])
@pytest.mark.parametrize("name", list(events.FIELDS))
def test_builder_output_round_trips_through_records(name, none):
    fn = _builder_defs()[name]
    kwargs = {a.arg: _sample(ast.unparse(a.annotation), i, none) for i, a in enumerate(fn.args.kwonlyargs)}
    event = getattr(events, name)(**kwargs)
    assert type(event) is tuple
    assert event == (kwargs["t"], kwargs["cpu"], name, *(kwargs[f] for f in events.FIELDS[name]))
    rec = events.to_record(event)
    assert list(rec) == ["t", "cpu", "ev", *(f for f in events.FIELDS[name] if kwargs[f] is not None)]
    assert events.from_record(rec) == event
