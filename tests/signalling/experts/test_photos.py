"""Experts' photos (signalling/expert_photos.py): validated by decoding, remade by the server,
stored in the expert store (both backends), served without a token."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from signalling.experts.model import Profile

from .test_experts import api, auth, directory, error_of, put_profile, sessions  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def image_bytes(fmt: str, size: tuple[int, int] = (640, 480), exif_orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (200, 40, 40))
    out = io.BytesIO()
    extra: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        exif[0x010F] = "SecretCam GPS 51.5N"  # Make: metadata that must not survive
        extra["exif"] = exif.tobytes()
    image.save(out, fmt, **extra)
    return out.getvalue()


async def put_photo(api: Any, expert_id: str, body: bytes, content_type: str, as_user: str | None = None) -> Any:  # noqa: F811
    headers = {**auth(api, as_user or expert_id, "expert"), "Content-Type": content_type}
    return await api.put(f"/api/experts/{expert_id}/photo", data=body, headers=headers)


async def test_a_photo_is_remade_stored_and_served(api) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert (await put_profile(api, "erin", {"display_name": "Erin"})).status == 201
    # Rotated by EXIF (6: 90° clockwise) and carrying metadata: served upright, square, bare.
    resp = await put_photo(api, "erin", image_bytes("JPEG", (640, 480), exif_orientation=6), "image/jpeg")
    assert resp.status == 200, await resp.text()
    url = (await resp.json())["photo"]
    assert url.startswith("/api/experts/erin/photo?v=")
    profile = await (await api.get("/api/experts/erin", headers=auth(api, "cleo", "client"))).json()
    assert profile["photo"] == url
    served = await api.get(url)  # no token: an <img> sends none
    assert served.status == 200 and served.content_type == "image/jpeg"
    body = await served.read()
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "JPEG" and image.size == (320, 320)
        assert not image.getexif()
    assert b"SecretCam" not in body
    # PNG and WebP too; then back to no photo.
    for fmt, media in (("PNG", "image/png"), ("WEBP", "image/webp")):
        assert (await put_photo(api, "erin", image_bytes(fmt), media)).status == 200
    assert (await api.delete("/api/experts/erin/photo", headers=auth(api, "erin", "expert"))).status == 200
    assert (await api.get("/api/experts/erin/photo")).status == 404
    profile = await (await api.get("/api/experts/erin", headers=auth(api, "cleo", "client"))).json()
    assert profile["photo"] is None


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"GIF89a...", "image/gif", 415, "unsupported_media_type"),
        (b"not an image at all", "image/png", 400, "invalid_photo"),
        (image_bytes("PNG"), "image/jpeg", 400, "invalid_photo"),  # it must be what it says
        (image_bytes("PNG")[:200], "image/png", 400, "invalid_photo"),  # truncated: fails when decoded
        (image_bytes("PNG", (8000, 6000)), "image/png", 400, "photo_too_large"),  # 48 Mpx of one colour: a small file
        (b"\xff" * (5 * 1024 * 1024 + 1), "image/jpeg", 413, "body_too_large"),
    ],
)
async def test_bad_photos_are_refused_with_a_code(api, body, content_type, status, code) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert (await put_profile(api, "erin", {"display_name": "Erin"})).status == 201
    resp = await put_photo(api, "erin", body, content_type)
    assert (resp.status, (await resp.json())["error"]["code"]) == (status, code)
    assert (await api.get("/api/experts/erin/photo")).status == 404  # nothing was kept


async def test_only_the_expert_sets_their_photo_after_saving_a_profile(api) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    png = image_bytes("PNG")
    assert await error_of(await put_photo(api, "erin", png, "image/png")) == (404, "expert_not_found", "id")
    assert (await put_profile(api, "erin", {"display_name": "Erin"})).status == 201
    assert await error_of(await put_photo(api, "erin", png, "image/png", as_user="mallory")) == (403, "forbidden", "id")
    resp = await api.put("/api/experts/erin/photo", data=png, headers={**auth(api, "erin", "client"), "Content-Type": "image/png"})
    assert resp.status == 403
    assert (await api.put("/api/experts/erin/photo", data=png, headers={"Content-Type": "image/png"})).status == 401


async def test_photos_on_both_stores(directory) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert await directory.store.set_photo("ada", b"jpeg", 5) is False  # no such expert
    await directory.upsert_profile("ada", Profile(display_name="Ada"))
    assert await directory.store.set_photo("ada", b"jpeg-1", 5) is True
    assert await directory.store.photo("ada") == b"jpeg-1"
    assert (await directory.get("ada")).photo_at == 5  # type: ignore[union-attr]
    # A profile saved again keeps its photo.
    await directory.upsert_profile("ada", Profile(display_name="Ada L."))
    assert (await directory.get("ada")).photo_at == 5 and await directory.store.photo("ada") == b"jpeg-1"  # type: ignore[union-attr]
    assert await directory.store.set_photo("ada", None, 6) is True
    assert await directory.store.photo("ada") is None and (await directory.get("ada")).photo_at is None  # type: ignore[union-attr]
