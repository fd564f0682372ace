"""OData v4 pieces shared by the Dynamics clients (F&O and Business Central): the CSDL $metadata model and
the XML name encoding of enum members.

Enum members whose names are not valid identifiers are spelled the way .NET's ``XmlConvert.EncodeName``
spells them, in ``$metadata`` and on the wire: every character that cannot appear becomes ``_xHHHH_``
(Business Central's blank member is ``"_x0020_"``, its "In Review" status ``"In_x0020_Review"``; API-FACTS
§2). The product works with the captions (``" "``, ``"In Review"``) and translates at the client.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

EDM_NS = "http://docs.oasis-open.org/odata/ns/edm"
_ENCODED_CHAR = re.compile(r"_x([0-9A-Fa-f]{4})_")


def decode_member_name(name: str) -> str:
    """``"In_x0020_Review"`` -> ``"In Review"``, ``"_x0020_"`` -> ``" "``; other text is returned unchanged."""
    return _ENCODED_CHAR.sub(lambda m: chr(int(m.group(1), 16)), name) if "_x" in name else name


def encode_member_name(caption: str) -> str:
    """``"In Review"`` -> ``"In_x0020_Review"``: what is not a letter, digit or ``_`` becomes ``_xHHHH_`` (and a
    literal ``_x`` that would read as an escape has its underscore encoded, as XmlConvert does)."""
    out = []
    for i, c in enumerate(caption):
        if c.isalnum() or c == "_" and not _ENCODED_CHAR.match(caption, i):
            out.append(c)
        else:
            out.append(f"_x{ord(c):04X}_")
    return "".join(out)


@dataclass
class EntitySetInfo:
    entity_type: str
    keys: list[str]
    properties: dict[str, str] = field(default_factory=dict)   # name -> Edm type or enum type full name
    navigation: dict[str, str] = field(default_factory=dict)   # name -> target type
    actions: set[str] = field(default_factory=set)


@dataclass
class ODataMetadata:
    entity_sets: dict[str, EntitySetInfo] = field(default_factory=dict)
    enums: dict[str, list[str]] = field(default_factory=dict)   # full name -> members
    # Entity sets reached through a containment navigation property (BC: companies({id})/vendors), by name.
    contained: dict[str, EntitySetInfo] = field(default_factory=dict)
    _enum_properties: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def info(self, entity_set: str) -> EntitySetInfo | None:
        return self.entity_sets.get(entity_set) or self.contained.get(entity_set)

    def enum_properties(self, entity_set: str) -> dict[str, str]:
        """Property name -> enum type full name, for every enum-typed property of ``entity_set`` (worked out
        once per set: the Business Central client asks for every record it reads)."""
        found = self._enum_properties.get(entity_set)
        if found is None:
            info = self.info(entity_set)
            found = {p: t for p, t in info.properties.items() if t in self.enums} if info else {}
            self._enum_properties[entity_set] = found
        return found

    def enum_type(self, entity_set: str, prop: str) -> str | None:
        info = self.info(entity_set)
        typ = info.properties.get(prop) if info else None
        return typ if typ in self.enums else None

    @classmethod
    def parse(cls, xml: str | bytes) -> ODataMetadata:
        """CSDL v4 EDMX -> entity sets with keys, property types, navigation, bound actions; enum types."""
        root = ET.fromstring(xml)
        ns = {"edm": EDM_NS}
        types: dict[str, tuple[list[str], dict[str, str], dict[str, str]]] = {}
        enums: dict[str, list[str]] = {}
        actions: dict[str, set[str]] = {}
        sets: dict[str, str] = {}
        for schema in root.iter(f"{{{EDM_NS}}}Schema"):
            namespace = schema.get("Namespace", "")
            for et in schema.findall("edm:EntityType", ns):
                keys = [r.get("Name", "") for r in et.findall("edm:Key/edm:PropertyRef", ns)]
                props = {p.get("Name", ""): p.get("Type", "") for p in et.findall("edm:Property", ns)}
                navs = {n.get("Name", ""): n.get("Type", "") for n in et.findall("edm:NavigationProperty", ns)}
                types[f"{namespace}.{et.get('Name')}"] = (keys, props, navs)
            for en in schema.findall("edm:EnumType", ns):
                enums[f"{namespace}.{en.get('Name')}"] = [m.get("Name", "") for m in en.findall("edm:Member", ns)]
            for action in schema.findall("edm:Action", ns):
                if action.get("IsBound") != "true":
                    continue
                params = action.findall("edm:Parameter", ns)
                if params:
                    bound = params[0].get("Type", "")
                    actions.setdefault(bound, set()).add(action.get("Name", ""))
            for container in schema.findall("edm:EntityContainer", ns):
                for es in container.findall("edm:EntitySet", ns):
                    sets[es.get("Name", "")] = es.get("EntityType", "")
        out = cls(enums=enums)
        for name, type_name in sets.items():
            keys, props, navs = types.get(type_name, ([], {}, {}))
            out.entity_sets[name] = EntitySetInfo(type_name, keys, props, navs, actions.get(type_name, set()))
        for _keys, _props, navs in types.values():
            for nav, target in navs.items():
                inner = target[len("Collection("):-1] if target.startswith("Collection(") else target
                if inner in types and nav not in out.entity_sets:
                    keys, props, inner_navs = types[inner]
                    out.contained.setdefault(nav, EntitySetInfo(inner, keys, props, inner_navs,
                                                                actions.get(inner, set())))
        return out


def or_chunks(groups: list[dict[str, Any]], budget: int, literal: Callable[[Any], str]) -> Iterator[str]:
    """Key groups as ``$filter`` clauses of at most ``budget`` characters each: ``(k1 eq v1 and k2 eq v2) or …``
    (a one-field key without parentheses). Many records by key in few calls (F&O, Acumatica)."""
    parts: list[str] = []
    size = 0
    for group in groups:
        terms = [f"{k} eq {literal(v)}" for k, v in group.items()]
        term = terms[0] if len(terms) == 1 else "(" + " and ".join(terms) + ")"
        cost = len(term) + (4 if parts else 0)
        if parts and size + cost > budget:
            yield " or ".join(parts)
            parts, size = [], 0
            cost = len(term)
        parts.append(term)
        size += cost
    if parts:
        yield " or ".join(parts)
