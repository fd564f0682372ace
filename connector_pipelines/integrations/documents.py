"""Records named the way finance ops name them (no Dagster here).

A ledger key (``bc:purchaseInvoices:841fda23-…``) tells a person nothing. Everything the UI shows about a
record — a reconcile finding, a record that needs a person, a resolution's outcome — names it as its entity's
definition does: the document label and number, and the entity's ``summary`` template rendered over the record
("Review purchase invoice PI-108001 from Contoso Paper: 1,234.50 USD"), with a link to the record in the ERP and
one to its target record (issue, item).

The writer keeps these words in each ledger row's context (``document``, ``summary``, ``url``: ``words_of``), so
a row can be named later without reading the source again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector_pipelines.core.ledger import LedgerEntry
from connector_pipelines.integrations.definition import EntitySync, render
from connector_pipelines.integrations.sources.base import SourceRecord

MAX_ROWS = 25      # rows of one table in Dagster metadata; the rest are counted (the ledger CLI lists all)


@dataclass(frozen=True)
class Document:
    """One source record as a person reads it."""

    key: str                    # the ledger / external key
    label: str                  # "Purchase invoice PI-108001"
    summary: str = ""           # the entity's summary template rendered over the record
    url: str | None = None      # the record in the ERP

    @property
    def words(self) -> str:
        """The summary when there is one (it names number, vendor and amount), else the label."""
        return self.summary or self.label


def words_of(entity: EntitySync, record: SourceRecord) -> dict[str, Any]:
    """What a ledger row remembers to name its record later (RecordWriter keeps it in the row's context)."""
    return {"document": record.number or record.data.get("number") or record.record_id,
            "summary": " ".join(render(entity.summary, record.data).split())[:300], "url": record.url}


def of_record(entity: EntitySync, record: SourceRecord) -> Document:
    words = words_of(entity, record)
    return Document(record.external_id, f"{entity.document_label} {words['document']}", words["summary"], record.url)


def of_entry(entity: EntitySync | None, entry: LedgerEntry | None, key: str | None = None) -> Document:
    """A record named from its ledger row (what the writer remembered); a row written before the words were
    kept, or a record the source never returned (quarantined), is named by its number or id."""
    context = (entry.context if entry else None) or {}
    key = key or (entry.source_key if entry else "")
    number = context.get("document") or context.get("record") or key.rsplit(":", 1)[-1]
    label = f"{entity.document_label if entity else 'Record'} {number}"
    return Document(key, label, str(context.get("summary") or ""), context.get("url"))


def parent_key(source_key: str) -> str:
    """A write-back row (``<key>#resolve``, ``<key>#write_back``) belongs to the record row ``<key>``."""
    return source_key.split("#", 1)[0]


@dataclass
class Finding:
    """One row of a table: a problem with a record, the record, its target records, and what to do."""

    problem: str
    document: Document
    targets: list[tuple[str, str]] = field(default_factory=list)   # (key, url) of its target records
    detail: str = ""


def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ").strip()


def _link(text: str, url: str | None) -> str:
    return f"[{_cell(text)}]({url})" if url else _cell(text)


def markdown_table(headers: list[str], rows: list[list[str]], total: int | None = None, more: str = "") -> str:
    """A markdown table (cells escaped); ``total`` > len(rows): a line saying how many more there are."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if total is not None and total > len(rows):
        lines.append(f"\n… and {total - len(rows)} more{more}")
    return "\n".join(lines)


def findings_markdown(findings: list[Finding], source_label: str, target_label: str) -> str:
    """| Problem | Document | <ERP> | <target> | Detail |, at most MAX_ROWS rows."""
    rows = [[_cell(f.problem), _cell(f.document.words), _link(f.document.label, f.document.url),
             ", ".join(_link(k, u) for k, u in f.targets) or "—", _cell(f.detail)] for f in findings[:MAX_ROWS]]
    return markdown_table(["Problem", "Document", f"{source_label} record", f"{target_label} record", "Detail"],
                          rows, len(findings), " (the ledger CLI lists every record)")


def sentence(findings: list[Finding], limit: int = 3) -> str:
    """One line naming the first few findings, for a check's description."""
    parts = [f"{f.problem}: {f.document.words}" for f in findings[:limit]]
    if len(findings) > limit:
        parts.append(f"{len(findings) - limit} more")
    return "; ".join(parts)


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["MAX_ROWS", "Document", "Finding", "findings_markdown", "markdown_table", "of_entry",
           "of_record", "parent_key", "sentence", "when", "words_of"]
