"""The one YAML loader for config files and DAG files. Pure: no Django, no controlplane.

Both kinds of file are read the same way, so a value means the same thing wherever it is
written (`country: no` is the text "no" in a worker's config and in a DAG's selector):

- Plain data only (a SafeLoader): never arbitrary Python objects.
- YAML 1.2 booleans, as the Go original (yaml.v3): only true/false (any case form YAML 1.2
  allows). PyYAML's YAML 1.1 would read `ON:` as a boolean key and `region: no` as False.
- A key given twice in one mapping is an error (PyYAML would keep the last silently).
- Hostile input is refused with one line before anything walks it: nesting deeper than
  MAX_DEPTH (checked while composing, which is recursive in PyYAML), a recursive alias
  (`&r [1, *r]`), and aliases that expand to more than MAX_ALIAS_EXPANSION nodes beyond
  the ones written (the "billion laughs"). The check walks the composed node graph once,
  sharing each anchored node, so it costs the size of the text, not of the expansion.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml

__all__ = ["MAX_ALIAS_EXPANSION", "MAX_DEPTH", "YamlError", "load_all", "load_one"]

# A DAG file nests about six levels and a config file three; 64 leaves room for data in
# parallel items while keeping every recursive walk (ours and the libraries') far from
# Python's recursion limit.
MAX_DEPTH = 64
# Nodes that aliases may add beyond the ones written. Anchors for shared env or selectors
# in a large DAG add a few thousand; a 1 KB alias bomb adds billions.
MAX_ALIAS_EXPANSION = 100_000


class YamlError(ValueError):
    """Unreadable YAML; `str()` is one line: `invalid YAML at line L, column C: PROBLEM`."""

    def __init__(self, problem: str, *, line: int | None = None, column: int | None = None):
        self.problem = problem
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"invalid YAML{where}: {problem}")


_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                # peek_event is untyped in types-PyYAML; the event is always there mid-node.
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key_node.value}"', key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_all(text: str) -> list[object]:
    """Every non-empty document of `text` (`---` at either end yields no empty ones)."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters before parsing
        raise YamlError(str(exc).splitlines()[0]) from None
    documents: list[object] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # check_node said there is one; the stubs cannot know that
                break
            _check_expansion(node)
            document = loader.construct_document(node)
            if document is not None:
                documents.append(document)
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc).splitlines()[0]) from None
    except RecursionError:
        # Belt and braces: the depth check above should make this unreachable.
        raise YamlError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return documents


def load_one(text: str) -> object:
    """The single document of `text` (None when empty); more than one is an error."""
    documents = load_all(text)
    if len(documents) > 1:
        raise YamlError("expected a single document, found several separated by ---")
    return documents[0] if documents else None


def _marked_error(exc: yaml.MarkedYAMLError) -> YamlError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "syntax error"
    if exc.context:
        problem = f"{problem} ({exc.context})"
    if mark is None:
        return YamlError(problem)
    return YamlError(problem, line=mark.line + 1, column=mark.column + 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse recursive aliases, deep expanded nesting and alias bombs, iteratively.

    Aliases make the node graph a DAG (or, when recursive, cyclic): each node's expanded
    size and depth are computed once and shared by every alias of it.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            children = _children(node)
            # Capped so a bomb's sizes stay small numbers; the cap is already a refusal.
            size[key] = min(1 + sum(size[id(c)] for c in children), 2 * MAX_ALIAS_EXPANSION)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if depth[key] > MAX_DEPTH:
                raise _node_error(node, f"aliases nest deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            # Everything popped while a node is open lies below it: it contains itself.
            raise _node_error(node, "recursive alias: an anchor is used inside itself")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    if size[id(root)] - len(size) > MAX_ALIAS_EXPANSION:
        raise _node_error(root, f"aliases expand to more than {MAX_ALIAS_EXPANSION:,} extra nodes")


def _node_error(node: yaml.Node, problem: str) -> YamlError:
    mark = node.start_mark
    return YamlError(problem, line=mark.line + 1, column=mark.column + 1)
