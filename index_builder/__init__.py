"""Turn folders of images and PDFs into persistent, resumable MetaEmbed galleries.

The CLI (``python -m index_builder``) and the app both call these functions.
"""

from index_builder.builder import BuildReport, add, build
from index_builder.errors import GalleryError, InputSkipped
from index_builder.gallery import Gallery
from index_builder.manage import GalleryInfo, VerifyReport, info, load_gallery, remove, verify
from index_builder.progress import Progress

__all__ = [
    "BuildReport", "Gallery", "GalleryError", "GalleryInfo", "InputSkipped", "Progress", "VerifyReport",
    "add", "build", "info", "load_gallery", "remove", "verify",
]
