"""Generated inputs for the index_builder tests: good images in every format, real PDFs, and bad files.

The PDFs are written by hand (a few objects and an xref) so that no PDF-writing package is needed and
each defect is exactly the one named: an /Encrypt dictionary whose user password is not empty, a
file with a PDF header and no objects, a truncated file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw


def write_pdf(path: Path, pages: list[str], encrypt: bool = False) -> Path:
    """A valid PDF with one Helvetica line of ``text`` and a coloured box per page (text layer included)."""
    objs: dict[int, bytes] = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objs[2] = f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()
    objs[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    for i, (pid, text) in enumerate(zip(page_ids, pages, strict=True)):
        box = f"0.{i % 9 + 1} 0.4 0.7 rg 72 300 {100 + 40 * (i % 10)} 200 re f"
        content = f"{box} BT /F1 24 Tf 72 720 Td ({text}) Tj ET"
        objs[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                     f"/Contents {pid + 1} 0 R >>").encode()
        objs[pid + 1] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content.encode())
    trailer_extra = ""
    if encrypt:  # Standard handler R2 with random O/U: the empty user password does not open it
        key = max(objs) + 1
        objs[key] = b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -44 >>"
        trailer_extra = f" /Encrypt {key} 0 R /ID [<{'01' * 16}> <{'01' * 16}>]"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objs[num] + b"\nendobj\n"
    xref, size = len(out), max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size))
    out += f"trailer\n<< /Size {size} /Root 1 0 R{trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def picture(seed: int, size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    """A distinct little picture per seed (different colours and shapes -> different vectors)."""
    colour = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256)
    im = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(im)
    draw.ellipse((seed % 20, seed % 10, size[0] - 5, size[1] - 3), fill=(255 - colour[0], colour[2], colour[1]))
    return im.convert(mode)


def good_inputs(root: Path) -> dict[str, Path]:
    """One file per supported format, in nested folders, plus a 2-page PDF and a mislabelled-but-valid JPEG."""
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    files = {
        "png": root / "a.png", "jpeg": root / "sub" / "b.jpg", "webp": root / "sub" / "c.webp",
        "bmp": root / "sub" / "deeper" / "d.bmp", "tiff": root / "e.tiff", "gif": root / "f.gif",
        "rgba": root / "g_rgba.png", "jpeg_as_png": root / "h_really_jpeg.png",
    }
    picture(1).save(files["png"])
    picture(2).save(files["jpeg"], quality=90)
    picture(3).save(files["webp"])
    picture(4).save(files["bmp"])
    picture(5).save(files["tiff"])
    frames = [picture(6), picture(7)]
    frames[0].save(files["gif"], save_all=True, append_images=frames[1:], duration=100)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((16, 16, 48, 48), fill=(200, 30, 30, 255))
    rgba.save(files["rgba"])
    picture(8).save(files["jpeg_as_png"], format="JPEG")
    files["pdf"] = write_pdf(root / "doc.pdf", ["Hello world page one", "Second page about cats"])
    return files


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` with almost no data: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bad_inputs(root: Path) -> dict[str, Path]:
    """Every kind of bad input the issue lists; each must be skipped with a reason, never crash."""
    root.mkdir(parents=True, exist_ok=True)
    jpeg = root / "_full.jpg"
    picture(9, (256, 256)).save(jpeg, quality=95)
    data = jpeg.read_bytes()
    jpeg.unlink()
    files = {
        "empty": root / "empty.png", "truncated": root / "truncated.jpg", "corrupt": root / "corrupt.png",
        "mislabelled": root / "notes.jpg", "bomb": root / "bomb.png", "unsupported": root / "drawing.svg",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    files["mislabelled"].write_text("these are my notes, not a picture\n")
    png_header_only(files["bomb"], 40_000, 40_000)
    files["unsupported"].write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>\n')
    files["encrypted"] = write_pdf(root / "encrypted.pdf", ["secret"], encrypt=True)
    files["broken_pdf"] = root / "broken.pdf"
    files["broken_pdf"].write_bytes(b"%PDF-1.4\nthis is not a pdf at all\n%%EOF\n")
    full = write_pdf(root / "_tmp.pdf", ["a", "b"]).read_bytes()
    (root / "_tmp.pdf").unlink()
    files["truncated_pdf"] = root / "truncated.pdf"
    files["truncated_pdf"].write_bytes(full[:300])
    files["too_many_pages"] = write_pdf(root / "long.pdf", [f"page {i}" for i in range(5)])
    files["dangling_link"] = root / "dangling.png"
    files["dangling_link"].symlink_to(root / "does-not-exist.png")
    return files


def many_pictures(root: Path, n: int) -> Path:
    """``n`` distinct PNGs in one folder (for resume tests)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        picture(100 + i).save(root / f"pic{i:03d}.png")
    return root
