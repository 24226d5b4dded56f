"""Reading metadata from images other tools made, and refusing image bytes that would hurt the server."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from sdweb.images.metadata import (
    NO_METADATA_MESSAGE,
    ImageDecodeError,
    decode_base64_image,
    decode_image_bytes,
    decode_user_comment,
    encode_user_comment,
    exif_bytes_with_user_comment,
    read_image_metadata,
)

INFOTEXT = (
    "a cat, (masterpiece:1.2)\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 12345, Size: 64x64, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def png_bytes(text: dict[str, str] | None = None, size: tuple[int, int] = (16, 16)) -> bytes:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", size, "purple").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    return decode_image_bytes(data)


def test_a1111_png_parameters() -> None:
    meta = read_image_metadata(open_bytes(png_bytes({"parameters": INFOTEXT})))
    assert meta.source == "a1111"
    assert meta.parameters == INFOTEXT
    assert meta.message is None


def test_a1111_png_non_latin1_parameters_via_itxt() -> None:
    text = "猫, 桜\n" + INFOTEXT.split("\n", 1)[1]
    meta = read_image_metadata(open_bytes(png_bytes({"parameters": text})))
    assert meta.parameters == text


def test_comfyui_png_prompt_and_workflow_shown_raw() -> None:
    prompt = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}})
    workflow = json.dumps({"nodes": [{"id": 3, "type": "KSampler"}], "links": []})
    meta = read_image_metadata(open_bytes(png_bytes({"prompt": prompt, "workflow": workflow})))
    assert meta.source == "comfyui"
    assert meta.parameters is None
    assert meta.raw["prompt"] == prompt
    assert meta.raw["workflow"] == workflow
    assert meta.message is not None and "ComfyUI" in meta.message


def test_invokeai_novelai_and_fooocus_are_recognised() -> None:
    invoke = read_image_metadata(open_bytes(png_bytes({"invokeai_metadata": '{"positive_prompt": "cat"}'})))
    assert (invoke.source, invoke.parameters) == ("invokeai", None)
    assert invoke.raw["invokeai_metadata"] == '{"positive_prompt": "cat"}'

    nai_comment = json.dumps({"uc": "lowres", "steps": 28, "scale": 5, "seed": 1, "sampler": "k_euler"})
    novelai = read_image_metadata(
        open_bytes(png_bytes({"Software": "NovelAI", "Description": "1girl", "Comment": nai_comment}))
    )
    assert novelai.source == "novelai"
    assert novelai.raw["Description"] == "1girl" and novelai.raw["Comment"] == nai_comment

    fooocus_text = read_image_metadata(
        open_bytes(png_bytes({"parameters": INFOTEXT, "fooocus_scheme": "a1111"}))
    )
    assert (fooocus_text.source, fooocus_text.parameters) == ("fooocus", INFOTEXT)
    fooocus_json = read_image_metadata(
        open_bytes(png_bytes({"parameters": '{"prompt": "cat"}', "fooocus_scheme": "fooocus"}))
    )
    assert (fooocus_json.source, fooocus_json.parameters) == ("fooocus", None)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_is_read_back(fmt: str) -> None:
    text = INFOTEXT.replace("a cat", "un chat, été, 猫")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buffer, format=fmt, exif=exif_bytes_with_user_comment(text))
    meta = read_image_metadata(open_bytes(buffer.getvalue()))
    assert meta.source == "a1111"
    assert meta.parameters == text


def test_jpeg_user_comment_written_little_endian_by_another_tool() -> None:
    exif = Image.Exif()
    exif.endian = "<"
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: b"UNICODE\x00" + INFOTEXT.encode("utf-16-le")}
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert read_image_metadata(open_bytes(buffer.getvalue())).parameters == INFOTEXT


def test_user_comment_encodings() -> None:
    assert encode_user_comment("Hi") == b"UNICODE\x00\x00H\x00i"  # what piexif's "unicode" writes
    assert decode_user_comment(encode_user_comment("Steps: 20, 猫")) == "Steps: 20, 猫"
    assert decode_user_comment(b"ASCII\x00\x00\x00plain text") == "plain text"
    assert decode_user_comment(b"\x00" * 8 + "utf8 ü".encode()) == "utf8 ü"


def test_camera_user_comment_is_not_taken_for_parameters() -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: b"ASCII\x00\x00\x00holiday 2019"}
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", exif=exif.tobytes())
    meta = read_image_metadata(open_bytes(buffer.getvalue()))
    assert meta.parameters is None
    assert meta.source == "unknown"
    assert meta.raw["UserComment"] == "holiday 2019"


def test_image_without_metadata_says_so() -> None:
    meta = read_image_metadata(open_bytes(png_bytes()))
    assert meta.source == "none"
    assert meta.parameters is None
    assert meta.raw == {}
    assert meta.message == NO_METADATA_MESSAGE == "This image has no generation parameters"


def _png_claiming_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image_bytes(_png_claiming_size(60_000, 60_000))  # 3.6 G pixels, a ~100-byte file
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image_bytes(_png_claiming_size(3000, 3000), max_pixels=1_000_000)


def test_broken_bytes_refused() -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image_bytes(b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match="no image data"):
        decode_image_bytes(b"")
    whole = png_bytes(size=(256, 256))
    with pytest.raises(ImageDecodeError, match="broken"):
        decode_image_bytes(whole[: len(whole) // 2])


def test_base64_plain_and_data_url() -> None:
    data = png_bytes({"parameters": INFOTEXT})
    encoded = base64.b64encode(data).decode()
    for text in (encoded, f"data:image/png;base64,{encoded}", f"  data:image/PNG;base64,{encoded}\n"):
        image = decode_base64_image(text)
        assert image.size == (16, 16)
        assert read_image_metadata(image).parameters == INFOTEXT
    # Wrapped lines and missing padding, as some clients send.
    wrapped = "\n".join(encoded.rstrip("=")[i : i + 76] for i in range(0, len(encoded.rstrip("=")), 76))
    assert decode_base64_image(wrapped).size == (16, 16)


def test_base64_errors_are_clear() -> None:
    with pytest.raises(ImageDecodeError, match="base64"):
        decode_base64_image("not base64 at all!!")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_base64_image("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(ImageDecodeError, match="not base64-encoded"):
        decode_base64_image("data:image/png,rawdata")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_base64_image(base64.b64encode(b"hello world").decode())
