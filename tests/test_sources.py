"""deepencoder.sources: PDFs (pypdfium2), multi-page TIFF/GIF, page ranges, folders/globs/lists, errors.

PDFs are made here: Pillow's PDF writer for real pages (each page a solid colour, so order and size
can be checked exactly), hand-written PDF bytes for the encrypted / zero-page / broken-page cases.
"""

import numpy as np
import pytest
from PIL import Image

from deepencoder import sources

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 90)]


def solid_pdf(path, sizes, colours=COLOURS):
    """A PDF whose page i is ``sizes[i]`` points (Pillow writes 1 px = 1 pt at resolution 72), one colour."""
    ims = [Image.new("RGB", s, colours[i % len(colours)]) for i, s in enumerate(sizes)]
    ims[0].save(path, save_all=True, append_images=ims[1:], resolution=72)
    return path


def raw_pdf(path, objs, trailer_extra=b""):
    """Hand-written PDF bytes with a correct xref table (for cases no writer produces on purpose)."""
    out = bytearray(b"%PDF-1.4\n")
    offs = []
    for i, o in enumerate(objs, 1):
        offs.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    x = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for o in offs:
        out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, trailer_extra, x)
    path.write_bytes(bytes(out))
    return path


def encrypted_pdf(path):
    """Standard security handler, R2, whose /U does not match the empty password: PDFium asks for one."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"]
    return raw_pdf(path, objs, b"/Encrypt 4 0 R /ID [<0123456789abcdef0123456789abcdef>"
                               b"<0123456789abcdef0123456789abcdef>] ")


def broken_page_pdf(path):
    """Two pages in the page tree; the second points at an object that does not exist."""
    return raw_pdf(path, [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R 9 0 R] /Count 2 >>",
                          b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>"])


def test_pdf_pages_in_order_at_144_dpi_mixed_sizes(tmp_path):
    sizes = [(100, 140), (140, 100), (73, 51)]
    p = str(solid_pdf(tmp_path / "doc.pdf", sizes))
    doc = sources.make_document(p)
    assert (doc.kind, doc.pages, doc.n_pages, doc.error) == ("pdf", (1, 2, 3), 3, None)
    got = list(sources.iter_pages(doc))
    assert [pg for pg, _ in got] == [1, 2, 3]
    for (pg, arr), (w, h), c in zip(got, sizes, COLOURS):
        assert arr.dtype == np.uint8 and arr.shape == (2 * h, 2 * w, 3)  # 144 dpi = 2 px per point, RGB
        assert arr.flags["C_CONTIGUOUS"]
        centre = arr[arr.shape[0] // 2, arr.shape[1] // 2]
        assert np.abs(centre.astype(int) - np.array(c)).max() <= 2, (pg, centre, c)  # RGB order, no alpha
    assert sources.load_page(p, 2, dpi=72).shape == (100, 140, 3)  # --dpi


def test_pdf_rendering_is_streamed(tmp_path, monkeypatch):
    p = str(solid_pdf(tmp_path / "doc.pdf", [(50, 50)] * 5))
    calls = []
    real = sources.render_pdf_page
    monkeypatch.setattr(sources, "render_pdf_page", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    it = sources.iter_pages(sources.make_document(p))
    next(it)
    assert calls == [1]  # one page rendered when one page is asked for
    next(it)
    assert calls == [1, 2]


def test_page_ranges(tmp_path):
    p = str(solid_pdf(tmp_path / "doc.pdf", [(40, 40)] * 6))
    assert sources.parse_page_ranges("3-5", 6) == [3, 4, 5]
    assert sources.parse_page_ranges("1,4-, 2", 6) == [1, 4, 5, 6, 2]
    docs = sources.expand_inputs([p + ":2-3", p], pages="5-6")
    assert [d.pages for d in docs] == [(2, 3), (5, 6)]  # the path's own range wins over --pages
    short = str(solid_pdf(tmp_path / "short.pdf", [(40, 40)] * 2))
    docs = sources.expand_inputs([p, short], pages="2-4")  # --pages: at most those pages of each document
    assert [d.pages for d in docs] == [(2, 3, 4), (2,)]
    assert [d.path for d in sources.expand_inputs([p, short], pages="3-")] == [p]  # short.pdf has no page 3
    with pytest.raises(ValueError, match=r"doc\.pdf.*past the end \(6 page"):
        sources.expand_inputs([p + ":5-9"])
    with pytest.raises(ValueError, match="bad page range"):
        sources.parse_page_ranges("2-1", 6)
    with pytest.raises(ValueError, match="bad page range"):
        sources.parse_page_ranges("x", 6)


def test_multipage_tiff_and_gif_every_frame(tmp_path):
    t = tmp_path / "scan.tif"
    frames = [Image.new("RGB", (30 + 10 * i, 20), COLOURS[i]) for i in range(3)]
    frames[0].save(t, save_all=True, append_images=frames[1:])
    doc = sources.make_document(str(t))
    assert (doc.kind, doc.pages) == ("multiframe", (1, 2, 3))
    got = list(sources.iter_pages(doc))
    assert [a.shape for _, a in got] == [(20, 30, 3), (20, 40, 3), (20, 50, 3)]
    assert [tuple(a[0, 0]) for _, a in got] == COLOURS[:3]
    g = tmp_path / "anim.gif"
    frames[0].save(g, save_all=True, append_images=frames[1:2])
    assert sources.make_document(str(g)).pages == (1, 2)
    single = tmp_path / "one.tif"
    frames[0].save(single)
    assert sources.page_inputs(str(single)) == [str(single)]


@pytest.mark.parametrize("case,needle", [("encrypted", "encrypted"), ("corrupt", "cannot open PDF: corrupt"),
                                         ("empty", "empty"), ("zero", "no pages")])
def test_unreadable_pdfs_name_the_file(tmp_path, case, needle):
    p = tmp_path / f"{case}.pdf"
    if case == "encrypted":
        encrypted_pdf(p)
    elif case == "corrupt":
        p.write_bytes(b"%PDF-1.4\n not really a pdf\n")
    elif case == "empty":
        p.write_bytes(b"")
    else:  # a zero-page document as PDFium itself writes it
        import pypdfium2 as pdfium

        d = pdfium.PdfDocument.new()
        d.save(str(p))
        d.close()
    doc = sources.make_document(str(p))
    assert doc.pages == () and str(p) in doc.error and needle in doc.error
    assert "\n" not in doc.error
    with pytest.raises(ValueError, match=needle):
        sources.load_page(str(p), 1)


def test_one_bad_page_names_file_and_page(tmp_path):
    p = str(broken_page_pdf(tmp_path / "half.pdf"))
    got = list(sources.iter_pages(sources.make_document(p)))
    assert got[0][1].shape == (200, 200, 3)
    assert isinstance(got[1][1], ValueError) and f"{p}: page 2" in str(got[1][1])


def test_expand_inputs_folders_globs_lists(tmp_path):
    (tmp_path / "sub").mkdir()
    solid_pdf(tmp_path / "b.pdf", [(20, 20)] * 2)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.md").write_text("ignored")
    assert [d.path for d in sources.expand_inputs([str(tmp_path)])] == [str(tmp_path / "a.png"),
                                                                       str(tmp_path / "b.pdf")]
    assert len(sources.expand_inputs([str(tmp_path)], recursive=True)) == 3
    assert [d.path for d in sources.expand_inputs([str(tmp_path / "*.p*")])] == [str(tmp_path / "a.png"),
                                                                                str(tmp_path / "b.pdf")]
    lst = tmp_path / "list.txt"
    lst.write_text("# corpus\nb.pdf:2\n\nsub/c.jpg\n")
    docs = sources.expand_inputs(["@" + str(lst)])
    assert [(d.path, d.pages) for d in docs] == [(str(tmp_path / "b.pdf"), (2,)), (str(tmp_path / "sub/c.jpg"), (1,))]
    with pytest.raises(FileNotFoundError, match="input not found: .*nope.pdf"):
        sources.expand_inputs([str(tmp_path / "nope.pdf")])
    with pytest.raises(FileNotFoundError, match="matches no"):
        sources.expand_inputs([str(tmp_path / "*.webp")])


def test_cli_collect_inputs_expands_pdf_pages(tmp_path):
    from deepencoder.cli import CLIError, collect_inputs

    p = str(solid_pdf(tmp_path / "doc.pdf", [(30, 40), (40, 30)]))
    assert collect_inputs([p]) == [p + ":1", p + ":2"]
    assert collect_inputs([p + ":2"]) == [p + ":2"]
    assert sources.load_input(p + ":2").size == (80, 60)
    encrypted_pdf(tmp_path / "locked.pdf")
    with pytest.raises(CLIError, match="locked.pdf: PDF is encrypted"):
        collect_inputs([str(tmp_path / "locked.pdf")])


def test_deepencoder_encode_accepts_pdf_paths(tmp_path):
    import torch

    from deepencoder import DeepEncoder, DeepEncoderConfig

    p = str(solid_pdf(tmp_path / "doc.pdf", [(100, 140), (140, 100)]))
    enc = DeepEncoder(config=DeepEncoderConfig.small_test(), device="cpu", dtype="float32",
                      backend="reference", seed=0)
    res = enc.encode([p], mode="tiny")
    assert [r.source for r in res] == [p + ":1", p + ":2"]
    assert [r.size for r in res] == [(200, 280), (280, 200)]
    ref = enc.encode([sources.load_page(p, 1), sources.load_page(p, 2)], mode="tiny")
    for a, b in zip(res, ref):
        torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
