"""JSON Schema validation whose regular expressions cannot pin the event loop.

An upstream's input schema (or an operator's constraint) may carry a `pattern`, or `patternProperties`
keys, that backtrack catastrophically: with Python's `re`, which holds the GIL and has no time limit, one
call of forty characters can stall every other call for minutes. Here those keywords (and
`additionalProperties` and `unevaluatedProperties`, which run the `patternProperties` regexes to find the
properties they cover) match with the `regex` package, which takes a time limit:

- one match may take PATTERN_TIMEOUT, all the matches of one call together PATTERN_BUDGET (`pattern_budget()`);
- a match that runs out of time raises `PatternError`: the whole validation stops and the call is refused.
  It is raised, not reported as a mismatch, so that `not`, `anyOf` or `if` cannot turn "took too long"
  into a pass.

`regex` has a cost of its own: compiling a counted repeat expands it (`x{100000000}` takes minutes and
gigabytes, holding the GIL). So every pattern is first compiled in a short-lived child process
(`schema_problem()`), with both `re` and `regex`; one that fails in either, that `re` warns reads
differently elsewhere (POSIX classes and set operations inside `[...]`, which `regex` does honour), or that
takes longer than PATTERN_COMPILE_LIMIT to compile makes the schema unusable: the tool's calls are refused
as `schema_violation`, as for any invalid input schema, and a constraint fails the configuration. Only
vetted patterns are ever compiled in the guard's process; one that was not vetted (reached at call time
through a `$ref` to a place the metaschema does not look) is refused.

The validator is JSON Schema 2020-12 throughout: a `$schema` nested in the schema does not switch to
another dialect's stock validator (the root's `$schema` never did).

Known difference left as is: text like `{e<=1}` after an item is a literal for `re` but a fuzzy-match
constraint for `regex`. Patterns are matched one by one for `additionalProperties`; the stock validator
joins them with `|`, which changes the meaning of backreferences and inline flags.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import attrs
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import extend
from jsonschema_specifications import REGISTRY as SPECIFICATIONS  # type: ignore[import-untyped]
from referencing import Registry

from guard_mcp._errors import ConfigError

if TYPE_CHECKING:
    import regex

__all__ = [
    "PATTERN_BUDGET",
    "PATTERN_COMPILE_LIMIT",
    "PATTERN_TIMEOUT",
    "PatternError",
    "bounded_validator",
    "is_bounded",
    "pattern_budget",
    "prepare",
    "schema_problem",
]

# `$ref`s resolve inside the schema and to the published metaschemas only. jsonschema's default
# fetches any other URI during validation: a hostile tool schema would make the guard request an
# address of its choosing (inside the network too) with the event loop waiting, and run whatever
# patterns came back unvetted. An unresolvable `$ref` denies the call (`schema_violation`).
LOCAL_ONLY: Registry[Any] = SPECIFICATIONS

PATTERN_TIMEOUT = 0.05  # seconds one match may take
PATTERN_BUDGET = 0.2  # seconds all the matches of one call may take together
PATTERN_COMPILE_LIMIT = 0.05  # seconds `regex` may take to compile one pattern (measured in the child)
_COMPILE_BUDGET = 0.25  # seconds all the patterns of one schema may take to compile
_CHILD_TIMEOUT = 10.0  # the child is killed after this (its interpreter start counts too)
_CHILD_MEMORY = 1 << 30  # bytes of address space the child may use

# Every pattern that passed the child's checks, compiled. Patterns come from tool definitions (a changed
# one is withheld until a person accepts it) and the configuration, so this grows with them only.
_compiled: dict[str, regex.Pattern[str]] = {}
_refused: dict[str, str] = {}

_CHILD = r"""
import json, re, sys, time, warnings
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
except Exception:
    pass
import regex
warnings.simplefilter("error")
for pattern in json.load(sys.stdin):
    error = None
    try:
        re.compile(pattern)
    except Warning as exc:
        error = f"{exc} (it reads differently in other regex engines)"
    except re.error as exc:
        error = str(exc)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    start = time.perf_counter()
    if error is None:
        try:
            regex.compile(pattern)
        except regex.error as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__} in the regex engine"
    print(json.dumps([time.perf_counter() - start, error]), flush=True)
"""


class PatternError(ConfigError):
    """A pattern could not be matched within its time, or is not one the guard can use: refuse the call.

    A ConfigError: the tool's schema (or an operator's constraint) cannot be used on this input."""


@dataclass
class _Budget:
    left: float


_budget: ContextVar[_Budget | None] = ContextVar("guard_mcp_pattern_budget", default=None)


@contextlib.contextmanager
def pattern_budget(seconds: float = PATTERN_BUDGET) -> Iterator[None]:
    """Bound the time all the pattern matches inside this block take together."""
    token = _budget.set(_Budget(seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def _show(pattern: str) -> str:
    return repr(pattern) if len(pattern) <= 80 else repr(pattern[:80]) + "…"


def _search(pattern: str, text: str) -> bool:
    compiled = _compiled.get(pattern)
    if compiled is None:
        raise PatternError(f"the pattern {_show(pattern)} was not checked when the tool's schema was prepared")
    budget = _budget.get()
    limit = PATTERN_TIMEOUT if budget is None else min(PATTERN_TIMEOUT, budget.left)
    too_long = PatternError(
        f"the tool's input schema has a pattern, {_show(pattern)}, that took too long on this value "
        f"({len(text)} characters; limit {PATTERN_TIMEOUT * 1000:g} ms a match, "
        f"{PATTERN_BUDGET * 1000:g} ms a call)"
    )
    if limit <= 0:
        raise too_long
    start = time.perf_counter()
    try:
        return compiled.search(text, timeout=limit) is not None
    except TimeoutError:
        raise too_long from None
    finally:
        if budget is not None:
            budget.left -= time.perf_counter() - start


# The keyword functions below are jsonschema's own (4.26, `_keywords.py` and `_utils.py`) with `re.search`
# replaced by `_search`; their results and messages are the same for patterns that match in time.


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: Any) -> Iterator[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for prop in instance:
        if prop not in properties and not any(_search(p, prop) for p in patterns):
            yield prop


def _extras(extras: list[Any]) -> tuple[str, str]:
    return ", ".join(repr(extra) for extra in extras), "was" if len(extras) == 1 else "were"


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional(instance, schema))
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            names, verb = _extras(sorted(extras, key=str))
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _valid(errors: Iterator[ValidationError]) -> bool:
    return next(errors, None) is None


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> list[str]:
    """jsonschema's `find_evaluated_property_keys_by_schema`."""
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[str] = []
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys.extend(
                _evaluated_keys(
                    validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                    instance,
                    resolved.contents,
                )
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is None:
            continue
        keys += (key for key, value in instance.items() if _valid(validator.descend(value, subschema)))
    if "patternProperties" in schema:
        for prop in instance:
            for pattern in schema["patternProperties"]:
                if _search(pattern, prop):
                    keys.append(prop)
    if "dependentSchemas" in schema:
        for prop, subschema in schema["dependentSchemas"].items():
            if prop in instance:
                keys += _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, up: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    unevaluated = []
    for prop in instance:
        if prop not in evaluated:
            for _ in validator.descend(instance[prop], up, path=prop, schema_path=prop):
                unevaluated.append(prop)
    if unevaluated and up is False:
        names, verb = _extras(sorted(unevaluated, key=str))
        yield ValidationError(f"Unevaluated properties are not allowed ({names} {verb} unexpected)")
    elif unevaluated:
        names, verb = _extras(unevaluated)
        yield ValidationError(
            f"Unevaluated properties are not valid under the given schema ({names} {verb} unevaluated and invalid)"
        )


_Bounded: Any = extend(
    Draft202012Validator,
    {  # type: ignore[no-untyped-call]
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties,
    },
)
_FIELDS = [(f.name, f.alias) for f in attrs.fields(_Bounded) if f.init]


def _evolve(self: Any, **changes: Any) -> Any:
    # jsonschema's evolve picks the class from a subschema's `$schema`, which would hand that subschema
    # (and everything under it) to a stock validator matching with `re`. Stay on this class.
    changes.setdefault("schema", self.schema)
    for name, alias in _FIELDS:
        if alias not in changes:
            changes[alias] = getattr(self, name)
    return _Bounded(**changes)


_Bounded.evolve = _evolve


def _vet(patterns: list[str]) -> None:
    """Run the patterns not seen before through the child; record each as compiled or refused."""
    new = [p for p in dict.fromkeys(patterns) if p not in _compiled and p not in _refused]
    if not new:
        return
    import regex  # here: a configuration whose constraints have no pattern never loads it in this process

    lines: list[str] = []
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(_CHILD_MEMORY)],
            input=json.dumps(new),
            capture_output=True,
            text=True,
            timeout=_CHILD_TIMEOUT,
            check=False,
        )
        lines = done.stdout.splitlines()
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        lines = (out.decode() if isinstance(out, bytes) else out).splitlines()
    spent = 0.0
    for i, pattern in enumerate(new):
        if i >= len(lines):
            # the child died or was stopped on this pattern (time or memory): never compile it here
            _refused[pattern] = "compiling it did not finish in time or memory"
            continue
        seconds, error = json.loads(lines[i])
        spent += seconds
        if error is not None:
            _refused[pattern] = error
        elif seconds > PATTERN_COMPILE_LIMIT or spent > _COMPILE_BUDGET:
            _refused[pattern] = "it takes too long to compile"
        else:
            _compiled[pattern] = regex.compile(pattern)


def schema_problem(schema: Any) -> str | None:
    """Why `schema` cannot be used to validate arguments (invalid, or a pattern the guard cannot use), or None.

    Its patterns are vetted (see the module's docstring); call it before `bounded_validator(schema)`.
    """
    return _vetted(schema)[0]


def prepare(schema: Any) -> tuple[Validator | None, str | None]:
    """The validator for `schema`, or why there is none. A schema without patterns gets the stock
    validator (no regex runs, so nothing to bound, and no per-call budget to pay for)."""
    problem, patterns = _vetted(schema)
    if problem is not None:
        return None, problem
    validator: Validator = (
        bounded_validator(schema)
        if patterns or _mentions_patterns(schema)
        else Draft202012Validator(schema, registry=LOCAL_ONLY)
    )
    return validator, None


def _mentions_patterns(schema: Any) -> bool:
    """Whether `pattern` or `patternProperties` appears anywhere in the document. The metaschema only
    sees (and `_vetted` only collects) patterns where a schema may stand, but a local `$ref` can point
    anywhere, under an unknown keyword too: such a pattern must reach the bounded validator, which
    refuses it as not vetted, never `re`."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "pattern" in node or "patternProperties" in node:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def is_bounded(validator: Validator) -> bool:
    return isinstance(validator, _Bounded)


def _vetted(schema: Any) -> tuple[str | None, list[str]]:
    patterns: list[str] = []
    checker = FormatChecker(formats=())
    checker.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)

    def collect(instance: object) -> bool:
        if isinstance(instance, str):
            patterns.append(instance)
        return True

    checker.checks("regex")(collect)
    try:
        Draft202012Validator.check_schema(schema, format_checker=checker)
    except SchemaError as exc:
        return str(exc.message), patterns
    _vet(patterns)
    for pattern in patterns:
        if pattern in _refused:
            return f"the pattern {_show(pattern)} cannot be used: {_refused[pattern]}", patterns
    return None, patterns


def bounded_validator(schema: Any) -> Validator:
    """A JSON Schema 2020-12 validator for `schema` whose regexes match under the limits above."""
    validator: Validator = _Bounded(schema, registry=LOCAL_ONLY)
    return validator
