"""Transfer syntax and media type negotiation (PS3.18 8.7): the rules, table-driven."""

from __future__ import annotations

import pytest

from viewer_api.dicomweb.negotiation import Choice, MediaRange, Resource, choose, parse_accept
from viewer_api.errors import NotAcceptable

ELE = "1.2.840.10008.1.2.1"
ILE = "1.2.840.10008.1.2"
DEFLATE = "1.2.840.10008.1.2.1.99"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
J2K = "1.2.840.10008.1.2.4.90"
JPEG = "1.2.840.10008.1.2.4.50"
BIG = "1.2.840.10008.1.2.2"
ENCODED = (ELE, ILE, JLS, RLE)


def can(stored: str, target: str) -> bool:
    """What the codecs give: the stored syntax, or a target we encode from little endian."""
    return target == stored or (target in ENCODED and stored != BIG)


DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, JLS, ("application/dicom", ELE)),  # the PS3.18 default
        ("", RLE, ("application/dicom", ELE)),
        ("*/*", J2K, ("application/dicom", ELE)),
        (DICOM, JLS, ("application/dicom", ELE)),
        ("multipart/related", JLS, ("application/dicom", ELE)),
        ("application/dicom", DEFLATE, ("application/dicom", ELE)),
        (f"{DICOM}; transfer-syntax=*", JLS, ("application/dicom", JLS)),
        (f"{DICOM}; transfer-syntax=*", BIG, ("application/dicom", BIG)),
        (f"{DICOM}; transfer-syntax={RLE}", JLS, ("application/dicom", RLE)),
        (
            f"{DICOM}; transfer-syntax={JPEG}, {DICOM}; transfer-syntax={ILE}",
            JLS,
            ("application/dicom", ILE),
        ),
        # q-values order the ranges; q=0 refuses one
        (
            f"{DICOM}; transfer-syntax=*; q=0.5, {DICOM}; transfer-syntax={RLE}",
            JLS,
            ("application/dicom", RLE),
        ),
        (f"{DICOM}; transfer-syntax=*; q=0, {DICOM}", JLS, ("application/dicom", ELE)),
        (f'{DICOM}; transfer-syntax="{JLS}"', JLS, ("application/dicom", JLS)),
        ("image/jpeg, application/dicom", JPEG, ("application/dicom", ELE)),
    ],
)
def test_instances_get_explicit_vr_little_endian_unless_asked_otherwise(
    accept: str | None, stored: str, expected: tuple[str, str]
) -> None:
    assert choose(parse_accept(accept), Resource.INSTANCES, stored, can) == Choice(*expected)


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, JLS, ("application/octet-stream", ELE)),
        ('multipart/related; type="*/*"', RLE, ("application/octet-stream", ELE)),
        (OCTETS, JLS, ("application/octet-stream", ELE)),
        (f"{OCTETS}; transfer-syntax=*", JLS, ("application/octet-stream", JLS)),
        (f"{OCTETS}; transfer-syntax=*", ILE, ("application/octet-stream", ELE)),
        (f"{OCTETS}; transfer-syntax=*", DEFLATE, ("application/octet-stream", ELE)),
        ("multipart/related; type=image/jls", JLS, ("image/jls", JLS)),
        ("multipart/related; type=image/jls", ELE, ("image/jls", JLS)),
        ("multipart/related; type=image/x-jls", JLS, ("image/jls", JLS)),
        ("multipart/related; type=image/jls; transfer-syntax=*", JLS, ("image/jls", JLS)),
        ("multipart/related; type=image/jp2; transfer-syntax=*", J2K, ("image/jp2", J2K)),
        ("multipart/related; type=image/*", J2K, ("image/jp2", J2K)),
        ("multipart/related; type=image/dicom-rle", RLE, ("image/dicom-rle", RLE)),
        (
            f"multipart/related; type=image/jp2, {OCTETS}; q=0.1",
            JLS,
            ("application/octet-stream", ELE),
        ),
    ],
)
def test_pixel_data_comes_uncompressed_unless_asked_otherwise(
    accept: str | None, stored: str, expected: tuple[str, str]
) -> None:
    assert choose(parse_accept(accept), Resource.PIXELS, stored, can) == Choice(*expected)


@pytest.mark.parametrize(
    ("accept", "resource", "stored"),
    [
        (f"{DICOM}; transfer-syntax={JPEG}", Resource.INSTANCES, JLS),
        (DICOM, Resource.INSTANCES, BIG),
        ("image/jpeg", Resource.INSTANCES, ELE),
        ("application/json", Resource.INSTANCES, ELE),
        (f"{DICOM}; q=0", Resource.INSTANCES, ELE),
        ("multipart/related; type=image/jp2", Resource.PIXELS, JLS),
        (f"multipart/related; type=image/jls; transfer-syntax={J2K}", Resource.PIXELS, JLS),
        ("multipart/related; type=image/jpeg", Resource.PIXELS, JLS),
        (DICOM, Resource.PIXELS, ELE),
        ("image/gif", Resource.RENDERED, ""),
        ("image/jls", Resource.BULK, ""),
    ],
)
def test_what_cannot_be_produced_is_not_acceptable(
    accept: str, resource: Resource, stored: str
) -> None:
    with pytest.raises(NotAcceptable):
        choose(parse_accept(accept), resource, stored, can)


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        (None, [], "image/jpeg"),
        ("image/png", [], "image/png"),
        ("image/png;q=0.4, image/jpeg", [], "image/jpeg"),
        ("image/*", [], "image/jpeg"),
        ('multipart/related; type="image/png"', [], "image/png"),
        ("image/jpeg", ["image/png"], "image/png"),  # the accept parameter wins
    ],
)
def test_rendered_media_types(accept: str | None, query: list[str], expected: str) -> None:
    ranges = parse_accept(accept, query)
    assert choose(ranges, Resource.RENDERED, "", can) == Choice(expected, "")


def test_the_part_type_names_the_syntax_sent() -> None:
    assert Choice("application/dicom", ELE).part_type() == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert Choice("image/png", "").part_type() == "image/png"


def test_parsing_keeps_the_clients_order_among_equal_q_and_caps_the_list() -> None:
    ranges = parse_accept("image/png, image/jpeg;q=0.9, */*;q=0.9, application/dicom")
    assert [r.media_type for r in ranges] == ["image/png", "application/dicom", "image/jpeg", "*/*"]
    assert ranges[0] == MediaRange("image/png", "", 1.0)
    assert len(parse_accept(",".join(["image/png"] * 10_000))) == 64


def test_q_values_out_of_range_or_unreadable_count_as_one_so_the_clients_order_decides() -> None:
    ranges = parse_accept("image/png, image/jpeg;q=5, application/dicom;q=high")
    assert [(r.media_type, r.q) for r in ranges] == [
        ("image/png", 1.0),
        ("image/jpeg", 1.0),
        ("application/dicom", 1.0),
    ]
    assert parse_accept("image/png;q=-1, image/jpeg") == [MediaRange("image/jpeg")]


def test_empty_items_are_skipped_and_every_accept_parameter_is_read() -> None:
    assert [r.media_type for r in parse_accept(" , ,image/png")] == ["image/png"]
    ranges = parse_accept(None, ["image/png", " ", "image/jpeg"])
    assert [r.media_type for r in ranges] == ["image/png", "image/jpeg"]


def test_multipart_wildcard_takes_its_type_parameter() -> None:
    ranges = parse_accept('multipart/*; type="application/dicom"; transfer-syntax=*')
    assert ranges == [MediaRange("application/dicom", "*", 1.0)]
    assert parse_accept("multipart/*") == [MediaRange("*/*")]


@pytest.mark.parametrize("accept", [None, "*/*", "application/*", "application/octet-stream"])
def test_bulk_data_comes_as_octets_without_a_syntax(accept: str | None) -> None:
    assert choose(parse_accept(accept), Resource.BULK, "", can) == Choice(
        "application/octet-stream", ""
    )


@pytest.mark.parametrize(
    ("resource", "stored", "expected"),
    [
        (Resource.INSTANCES, JLS, Choice("application/dicom", ELE)),
        (Resource.PIXELS, JLS, Choice("application/octet-stream", ELE)),
    ],
)
def test_an_application_wildcard_gets_the_default(
    resource: Resource, stored: str, expected: Choice
) -> None:
    assert choose(parse_accept("application/*"), resource, stored, can) == expected


def test_pixel_octets_are_refused_when_the_stored_syntax_cannot_be_turned_into_them() -> None:
    asked: list[tuple[str, str]] = []

    def never(stored: str, target: str) -> bool:
        asked.append((stored, target))
        return False

    with pytest.raises(NotAcceptable):
        choose(parse_accept(OCTETS), Resource.PIXELS, BIG, never)
    assert asked == [(BIG, ELE)]


def test_an_image_type_as_stored_keeps_the_stored_syntax_of_that_type_only() -> None:
    near_lossless = "1.2.840.10008.1.2.4.81"
    jls_any = parse_accept("multipart/related; type=image/jls; transfer-syntax=*")
    assert choose(jls_any, Resource.PIXELS, near_lossless, can) == Choice(
        "image/jls", near_lossless
    )
    jls = parse_accept("multipart/related; type=image/jls")
    assert choose(jls, Resource.PIXELS, near_lossless, can) == Choice("image/jls", JLS)
    assert choose(jls_any, Resource.PIXELS, ELE, can) == Choice("image/jls", JLS)


def test_not_acceptable_names_what_was_asked_what_is_stored_and_what_to_ask_for() -> None:
    with pytest.raises(NotAcceptable) as caught:
        choose(
            parse_accept(f"{DICOM}; transfer-syntax={JPEG}, image/gif"),
            Resource.INSTANCES,
            JLS,
            can,
        )
    message = str(caught.value)
    assert message.startswith(f"cannot send instances stored as {JLS} in any of: ")
    assert f"application/dicom; transfer-syntax={JPEG}, image/gif; ask for" in message
    assert 'type="application/dicom" with no transfer-syntax (Explicit VR' in message
    with pytest.raises(NotAcceptable) as caught:
        choose(parse_accept("image/gif"), Resource.BULK, "", can)
    assert "stored as no pixel data in any of: image/gif; bulk data comes as " in str(caught.value)


@pytest.mark.parametrize(
    ("resource", "says"),
    [
        (Resource.RENDERED, "rendered images come as image/jpeg or image/png"),
        (Resource.BULK, "bulk data comes as application/octet-stream"),
        (
            Resource.INSTANCES,
            'ask for multipart/related; type="application/dicom" with no transfer-syntax '
            "(Explicit VR Little Endian), transfer-syntax=* (as stored) or a syntax we encode",
        ),
        (
            Resource.PIXELS,
            'ask for multipart/related; type="application/octet-stream" (uncompressed), '
            "transfer-syntax=* (as stored) or the image type of the stored syntax",
        ),
    ],
)
def test_each_kind_of_resource_says_what_it_can_be_asked_for(resource: Resource, says: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        choose(parse_accept("image/gif"), resource, ELE, can)
    assert str(caught.value).endswith(f"in any of: image/gif; {says}")
