"""vitkit: vision transformers for folders of images, as a library and a command-line tool."""

__version__ = "0.1.0"
