//! The imager: streams an image from the store (or a raw/zstd file) onto block devices or files,
//! verifying every chunk before it is written and reading everything back afterwards.
