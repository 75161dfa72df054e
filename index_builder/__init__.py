"""Turn folders of images and PDFs into persistent, resumable MetaEmbed galleries.

The CLI (``python -m index_builder``) and the app both call these functions. The data path:
``discovery`` (sniff, hash, count pages once -> InputFile) -> ``builder`` (decode, encode, commit) ->
``gallery`` (manifest + index + thumbnails, with one ``GalleryItem`` record per image or PDF page), or
``sharded`` (K such galleries under one manifest; built on Ray by ``distributed``); ``search`` is the
single-process search of either.
"""

from index_builder.builder import BuildReport, add, build, open_target
from index_builder.discovery import InputFile, Rejected, inspect_file
from index_builder.errors import GalleryError, InputSkipped
from index_builder.gallery import Gallery
from index_builder.items import IMAGE, PDF_PAGE, GalleryItem
from index_builder.manage import GalleryInfo, VerifyReport, info, load_gallery, remove, verify
from index_builder.progress import Progress
from index_builder.search import search
from index_builder.sharded import ShardedGallery

__all__ = [
    "IMAGE", "PDF_PAGE", "BuildReport", "Gallery", "GalleryError", "GalleryInfo", "GalleryItem", "InputFile",
    "InputSkipped", "Progress", "Rejected", "ShardedGallery", "VerifyReport", "add", "build", "info", "inspect_file",
    "load_gallery", "open_target", "remove", "search", "verify",
]
