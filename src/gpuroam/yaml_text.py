"""YAML that a person wrote, read strictly: safe (no arbitrary objects), no key twice in one mapping, no
unordered `!!set`, and every way it can fail is one `YamlError` that says where and what to fix."""

from __future__ import annotations

from typing import Any, NoReturn

import yaml


class YamlError(ValueError):
    """Text that is not usable YAML; the message gives the line and column when PyYAML knows them."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a spec with a key twice is a mistake. And
    a `!!set` has no order, where a spec's lists are orders of preference (GPU types): refused."""

    def construct_set(self, node: yaml.MappingNode) -> NoReturn:
        raise yaml.constructor.ConstructorError(
            None, None, "a !!set has no order; write a list such as [nvidia-l4, nvidia-tesla-t4]", node.start_mark
        )

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice in one mapping; keep one", key.start_mark
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:set", _UniqueKeyLoader.construct_set)


def parse_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        fix = "fix it there (indent with spaces, one 'key: value' per line)"
        raise YamlError(f"invalid YAML{where}: {problem}; {fix}") from None
    except RecursionError:  # PyYAML composes and constructs nested collections recursively
        raise YamlError("invalid YAML: lists or mappings nested too deeply; a spec is a few levels deep") from None
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors fail in many ways on odd values
        # int() of a number past Python's 4300 digits, a date such as 2020-13-45 (ValueError), and explicit
        # tags on values they cannot take: `!!timestamp x` (AttributeError), `!!int ""` (IndexError).
        problem = f"a value it cannot read ({type(exc).__name__}: {exc})"
        raise YamlError(f"invalid YAML: {problem}; check numbers, dates and !!tags") from None
