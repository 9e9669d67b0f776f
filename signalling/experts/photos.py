"""Experts' photos: uploaded by the expert, checked by decoding, remade by the server, served by it.

- ``PUT /api/experts/{id}/photo`` (that expert or an admin): the image as the body, with its
  type (``image/jpeg``, ``image/png`` or ``image/webp``), at most ``MAX_PHOTO_BYTES``. It is
  decoded in full (Pillow) - a file that does not decode as the type it claims is refused -,
  turned upright from its EXIF orientation, cropped to a square and scaled to ``PHOTO_SIDE``
  pixels, and stored as a fresh JPEG: nothing of the upload (metadata, trailing bytes) is kept.
- ``DELETE /api/experts/{id}/photo``: back to the initials.
- ``GET /api/experts/{id}/photo``: the JPEG, without a token (an ``<img>`` sends none; profiles
  are what clients browse), cacheable by its version (``?v=`` in the profile's ``photo`` URL).

Photos live in the expert store (the node's SQLite file in the data dir, or the PostgreSQL every
node shares), keyed by the expert id: no request names a file.
"""

from __future__ import annotations

import asyncio
import io

from aiohttp import web
from PIL import Image, ImageOps, UnidentifiedImageError

from ..auth.tokens import TOKENS, Role, authenticate
from ..core.errors import http_error
from ..core.limits import read_limited
from .profiles import ExpertProfiles

MAX_PHOTO_BYTES = 5 * 1024 * 1024
# Decoded size: a small file can claim huge dimensions (a decompression bomb).
MAX_PHOTO_PIXELS = 40_000_000
PHOTO_SIDE = 320
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def setup(app: web.Application, experts: web.AppKey[ExpertProfiles]) -> None:
    """Register the routes; ``experts`` is the key the experts module's cleanup_ctx fills."""
    photos = Photos(experts)
    app.router.add_put("/api/experts/{id}/photo", photos.put)
    app.router.add_delete("/api/experts/{id}/photo", photos.delete)
    app.router.add_get("/api/experts/{id}/photo", photos.get)


class Photos:
    def __init__(self, experts: web.AppKey[ExpertProfiles]) -> None:
        self.experts = experts

    def _own(self, request: web.Request) -> str:
        identity = authenticate(request, request.app[TOKENS], Role.EXPERT)
        expert_id = request.match_info["id"]
        if not identity.is_admin and identity.user_id != expert_id:
            raise http_error(403, "forbidden", "experts can only change their own photo", "id")
        return expert_id

    async def put(self, request: web.Request) -> web.Response:
        expert_id = self._own(request)
        expected = FORMATS.get(request.content_type)
        if expected is None:
            raise http_error(415, "unsupported_media_type", f"send the photo as one of {', '.join(FORMATS)}")
        data = await read_limited(request, MAX_PHOTO_BYTES)
        # Decoding is CPU work: off the event loop.
        jpeg = await asyncio.get_running_loop().run_in_executor(None, remake, data, expected)
        experts = request.app[self.experts]
        if not await experts.store.set_photo(expert_id, jpeg, int(experts.clock())):
            raise http_error(404, "expert_not_found", "save the profile before its photo", "id")
        expert = await experts.get(expert_id)
        assert expert is not None
        return web.json_response({"photo": expert.to_json()["photo"]})

    async def delete(self, request: web.Request) -> web.Response:
        expert_id = self._own(request)
        experts = request.app[self.experts]
        if not await experts.store.set_photo(expert_id, None, int(experts.clock())):
            raise http_error(404, "expert_not_found", "no such expert", "id")
        return web.json_response({"photo": None})

    async def get(self, request: web.Request) -> web.Response:
        jpeg = await request.app[self.experts].store.photo(request.match_info["id"])
        if jpeg is None:
            raise http_error(404, "photo_not_found", "this expert has no photo", "id")
        # The URL carries the version: a new photo is a new URL.
        return web.Response(
            body=jpeg, content_type="image/jpeg",
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )


def remake(data: bytes, expected: str) -> bytes:
    """The upload decoded in full and remade as a ``PHOTO_SIDE`` square JPEG; a coded 400 for
    anything that is not an image of the ``expected`` Pillow format within the limits."""
    try:
        with Image.open(io.BytesIO(data), formats=[expected]) as image:
            width, height = image.size
            if width * height > MAX_PHOTO_PIXELS:
                raise http_error(400, "photo_too_large", f"a photo has at most {MAX_PHOTO_PIXELS} pixels")
            image.load()  # every byte decoded: a truncated or corrupt file fails here
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise http_error(400, "invalid_photo", "the body is not a readable image of the type it claims") from None
    square = ImageOps.fit(upright, (PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    square.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()
