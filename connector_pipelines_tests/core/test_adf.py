"""ADF builders: every output validates against Atlassian's published schema; empty text never appears."""

from __future__ import annotations

import jsonschema
import pytest

from connector_pipelines.core import adf
from sandboxes.specs import load_json_spec


@pytest.fixture(scope="module")
def validator():
    schema = load_json_spec("adf-schema-full.json")
    return jsonschema.Draft4Validator(schema)


def assert_valid(validator, document):
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_validator_rejects_an_empty_text_node(validator):
    # The schema really enforces what the builders avoid.
    bad = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}]}
    assert list(validator.iter_errors(bad))
    bad_marks = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "text", "text": "x", "marks": [{"type": "code"}, {"type": "strong"}]}]}]}
    assert list(validator.iter_errors(bad_marks))


@pytest.mark.parametrize("block", [
    adf.paragraph("hello"),
    adf.paragraph(),
    adf.paragraph(""),
    adf.paragraph("line one\nline two", adf.text(" bold", strong=True), adf.text(" it", em=True)),
    adf.paragraph(adf.text("both", strong=True, em=True), adf.text("x", code=True),
                  adf.text("code link", code=True, link="https://example.com/a")),
    adf.paragraph(adf.link("Open", "https://example.com/record?id=1&x=2"), adf.link("", "https://e.com")),
    adf.paragraph(adf.text("strong link", strong=True, link="https://example.com")),
    adf.paragraph([adf.text("a"), None, "b", adf.text("")]),
    adf.heading("Title", 1),
    adf.heading("Sub", level=6),
    adf.heading(""),
    adf.bullet_list(["one", "", [adf.text("two", strong=True), " and more"], adf.text("three"),
                     adf.bullet_list(["nested"])]),
    adf.table([["Field", "Value"], ["Vendor", "Contoso"], ["Amount", ""], ["Note", None]]),
    adf.table([["a", "b"]], header=False),
    adf.table([["h1"], ["multi\nline"]]),
    adf.rule(),
    adf.code_block("SELECT 1", "sql"),
    adf.code_block(""),
])
def test_every_builder_output_validates(validator, block):
    document = adf.doc(block)
    assert_valid(validator, document)
    for node in _walk(document):
        if node.get("type") == "text":
            assert node["text"] != ""


def test_a_rich_document_validates(validator):
    document = adf.doc(
        adf.heading("Vendor invoice INV-001 needs attention", 2),
        adf.paragraph("The invoice is ", adf.text("on hold", strong=True), " in ", adf.text("USMF", code=True), "."),
        adf.table([["Field", "Value"], ["Vendor", "US-101"], ["Amount", "1,234.50 USD"], ["Due", ""]]),
        adf.bullet_list(["Check the PO", "Match the receipt"]),
        adf.rule(),
        adf.paragraph(adf.link("Open the record in the ERP", "https://erp.example.com/inv/1")),
        "a plain string block",
        None,
    )
    assert_valid(validator, document)
    assert document["version"] == 1 and document["type"] == "doc"


def test_empty_text_is_handled():
    assert adf.text("") is None
    assert adf.text(None) is None  # type: ignore[arg-type]
    assert adf.paragraph("") == {"type": "paragraph"}
    assert adf.paragraph(adf.text(""), "") == {"type": "paragraph"}
    assert adf.paragraph({"type": "text", "text": ""}) == {"type": "paragraph"}
    assert adf.heading("") == {"type": "heading", "attrs": {"level": 2}}
    cell = adf.table([["h"], [""]])["content"][1]["content"][0]
    assert cell == {"type": "tableCell", "content": [{"type": "paragraph"}]}
    assert adf.doc(adf.paragraph("")) == {"type": "doc", "version": 1, "content": [{"type": "paragraph"}]}


def test_builder_guards():
    with pytest.raises(ValueError, match="code mark"):
        adf.text("x", code=True, strong=True)
    with pytest.raises(ValueError):
        adf.heading("x", level=7)
    with pytest.raises(ValueError):
        adf.bullet_list([])
    with pytest.raises(ValueError):
        adf.table([])


def test_marks_and_links_shape():
    node = adf.text("x", strong=True, em=True, link="https://a.example")
    assert node == {"type": "text", "text": "x", "marks": [
        {"type": "strong"}, {"type": "em"}, {"type": "link", "attrs": {"href": "https://a.example"}}]}
    assert adf.link("Open", "https://b.example") == {
        "type": "text", "text": "Open", "marks": [{"type": "link", "attrs": {"href": "https://b.example"}}]}
    assert adf.link("", "https://b.example")["text"] == "https://b.example"
    hb = adf.paragraph("a\nb")["content"]
    assert [n["type"] for n in hb] == ["text", "hardBreak", "text"]


def test_plain_text_round_trip():
    assert adf.plain_text(adf.doc(adf.paragraph("hello world"))) == "hello world"
    assert adf.plain_text(adf.doc(adf.paragraph("a\nb"))) == "a\nb"
    assert adf.plain_text(adf.doc(adf.paragraph(adf.text("connector_pipelines: ", strong=True),
                                                adf.text("resolved in the ERP")))) == \
        "connector_pipelines: resolved in the ERP"
    document = adf.doc(
        adf.heading("Title"),
        adf.paragraph("Intro ", adf.link("link", "https://x.example")),
        adf.bullet_list(["one", "two"]),
        adf.table([["Field", "Value"], ["Vendor", "Contoso"]]),
        adf.rule(),
        adf.paragraph(""),
        adf.paragraph("end"),
    )
    assert adf.plain_text(document) == "Title\nIntro link\n- one\n- two\nField | Value\nVendor | Contoso\n---\n\nend"
    # Jira returns comments with extra node kinds; their text still comes through.
    from_jira = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "mention", "attrs": {"id": "1", "text": "@Ann"}}, {"type": "text", "text": " please check"}]}]}
    assert adf.plain_text(from_jira) == "@Ann please check"
    assert adf.plain_text({}) == "" and adf.plain_text(None) == ""
