//! Checking a photo before it is stored: a JPEG or PNG, whole, of a sane size.
//!
//! The check walks the file's structure instead of decoding every pixel, so a 4 MB photo is
//! checked in a few milliseconds without holding a 36 MB bitmap in memory: a JPEG must run from
//! its start-of-image marker through well-formed segments and entropy-coded scans to its
//! end-of-image marker; a PNG must be a sequence of chunks with correct CRCs from IHDR to IEND.
//! A photo cut short in transfer or on a full card fails either walk.

use std::path::{Path, PathBuf};

/// Largest photo accepted (a phone JPEG is 2 to 4 MB).
pub const MAX_PHOTO_BYTES: usize = sync_protocol::blob::MAX_BLOB_BYTES as usize;

/// Most pixels accepted (a 48-megapixel phone camera's full frame): a small file claiming more
/// would take seconds and gigabytes to decode for its thumbnail.
pub const MAX_PIXELS: u64 = 50_000_000;

/// Why a file is not an acceptable photo.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    /// The file does not exist.
    #[error("photo file {0} does not exist")]
    Missing(PathBuf),
    /// The file cannot be read.
    #[error("cannot read photo file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Zero bytes.
    #[error("photo file {0} is empty")]
    Empty(PathBuf),
    /// Larger than [`MAX_PHOTO_BYTES`].
    #[error("photo file {path} is {size} bytes; the limit is {MAX_PHOTO_BYTES} (resize it first)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// More than [`MAX_PIXELS`].
    #[error("photo {path} is {width}x{height} pixels; the limit is {MAX_PIXELS} pixels (resize it first)")]
    TooManyPixels {
        /// The file.
        path: PathBuf,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// Neither JPEG nor PNG.
    #[error("{0} is not a photo: outpost accepts JPEG and PNG images")]
    NotAnImage(PathBuf),
    /// The file ends before the image does.
    #[error("photo file {path} is truncated ({detail}); take or copy it again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the structure broke off.
        detail: String,
    },
    /// The structure is damaged.
    #[error("photo file {path} is damaged: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// A checked photo.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The file's bytes, unchanged.
    pub bytes: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub mime: &'static str,
    /// Width and height in pixels.
    pub dimensions: (u32, u32),
}

/// Reads and checks a photo file.
pub fn load_photo(path: &Path) -> Result<Photo, PhotoError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PhotoError::Missing(path.to_path_buf())),
        Err(source) => return Err(PhotoError::Unreadable { path: path.to_path_buf(), source }),
    };
    if !meta.is_file() {
        return Err(PhotoError::NotAnImage(path.to_path_buf()));
    }
    if meta.len() > MAX_PHOTO_BYTES as u64 {
        return Err(PhotoError::TooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    let bytes = std::fs::read(path).map_err(|source| PhotoError::Unreadable { path: path.to_path_buf(), source })?;
    check_photo(path, bytes)
}

/// Checks bytes claimed to be a photo; `path` only names it in errors.
pub fn check_photo(path: &Path, bytes: Vec<u8>) -> Result<Photo, PhotoError> {
    if bytes.is_empty() {
        return Err(PhotoError::Empty(path.to_path_buf()));
    }
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err(PhotoError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64 });
    }
    let mime = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        walk_jpeg(&bytes).map_err(|e| e.into_error(path))?;
        "image/jpeg"
    } else if bytes.starts_with(PNG_SIGNATURE) {
        walk_png(&bytes).map_err(|e| e.into_error(path))?;
        "image/png"
    } else {
        return Err(PhotoError::NotAnImage(path.to_path_buf()));
    };
    let dimensions = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| PhotoError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?
        .into_dimensions()
        .map_err(|e| PhotoError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
    if u64::from(dimensions.0) * u64::from(dimensions.1) > MAX_PIXELS {
        return Err(PhotoError::TooManyPixels { path: path.to_path_buf(), width: dimensions.0, height: dimensions.1 });
    }
    if dimensions.0 == 0 || dimensions.1 == 0 {
        return Err(PhotoError::Corrupt { path: path.to_path_buf(), detail: "the image has no pixels".into() });
    }
    Ok(Photo { bytes, mime, dimensions })
}

/// Largest side of a thumbnail, in pixels.
pub const THUMBNAIL_PX: u32 = 256;

/// Memory a photo's decoding for its preview may take: a 48-megapixel phone frame (8 bits a
/// channel, 144 MB) fits; 50 megapixels of 16-bit RGBA (400 MB, from a PNG of a few hundred
/// KB) does not, and gets no preview.
const MAX_DECODE_BYTES: u64 = 192 * 1024 * 1024;

/// A small JPEG preview of a photo (about 10 KB), or `None` if it cannot be decoded (within
/// [`MAX_DECODE_BYTES`]).
pub fn thumbnail(photo: &Photo) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&photo.bytes)).with_guessed_format().ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().ok()?;
    let small = img.thumbnail(THUMBNAIL_PX, THUMBNAIL_PX).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&small).ok()?;
    Some(out)
}

/// A synthetic photograph for demos, tests and benchmarks: a skin-toned gradient with a
/// darker "lesion" and sensor-like noise, so that it compresses like a real photo.
/// Deterministic for a given `seed`. At 1920x1440 a JPEG is about 2 MB.
pub fn synthetic_rgb(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (cx, cy) = (width as f32 * 0.55, height as f32 * 0.45);
    let radius = (width.min(height) as f32) * 0.18;
    image::RgbImage::from_fn(width, height, |x, y| {
        // xorshift64*: cheap, deterministic noise.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let noise = |shift: u32| ((r >> shift) & 0x3F) as f32 - 32.0;
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt() / radius;
        let lesion = (1.0 - d).clamp(0.0, 1.0);
        let base = [224.0 - 0.02 * y as f32, 178.0 - 0.01 * x as f32, 150.0];
        let px = |c: usize, dark: f32, shift: u32| (base[c] - dark * lesion + noise(shift)).clamp(0.0, 255.0) as u8;
        image::Rgb([px(0, 90.0, 0), px(1, 110.0, 8), px(2, 100.0, 16)])
    })
}

/// A synthetic JPEG photo (see [`synthetic_rgb`]), already checked.
pub fn synthetic_jpeg(width: u32, height: u32, seed: u64) -> Result<Photo, PhotoError> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&synthetic_rgb(width, height, seed))
        .map_err(|e| PhotoError::Corrupt { path: PathBuf::from("synthetic.jpg"), detail: e.to_string() })?;
    check_photo(Path::new("synthetic.jpg"), bytes)
}

/// A synthetic PNG photo (see [`synthetic_rgb`]), already checked.
pub fn synthetic_png(width: u32, height: u32, seed: u64) -> Result<Photo, PhotoError> {
    let mut out = std::io::Cursor::new(Vec::new());
    synthetic_rgb(width, height, seed)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| PhotoError::Corrupt { path: PathBuf::from("synthetic.png"), detail: e.to_string() })?;
    check_photo(Path::new("synthetic.png"), out.into_inner())
}

enum Walk {
    Truncated(String),
    Corrupt(String),
}

impl Walk {
    fn into_error(self, path: &Path) -> PhotoError {
        match self {
            Walk::Truncated(detail) => PhotoError::Truncated { path: path.to_path_buf(), detail },
            Walk::Corrupt(detail) => PhotoError::Corrupt { path: path.to_path_buf(), detail },
        }
    }
}

fn walk_jpeg(b: &[u8]) -> Result<(), Walk> {
    let mut pos = 2; // after SOI
    let mut saw_scan = false;
    loop {
        // A marker: one or more 0xFF, then the marker code.
        if pos >= b.len() {
            return Err(Walk::Truncated(format!("no end-of-image marker; the file stops at byte {pos}")));
        }
        if b[pos] != 0xFF {
            return Err(Walk::Corrupt(format!("expected a marker at byte {pos}")));
        }
        while pos < b.len() && b[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = b.get(pos) else {
            return Err(Walk::Truncated("the file stops inside a marker".into()));
        };
        pos += 1;
        match marker {
            0xD9 => {
                return if saw_scan { Ok(()) } else { Err(Walk::Corrupt("end-of-image before any image data".into())) };
            }
            0x01 | 0xD0..=0xD7 => continue,
            0xD8 | 0x00 => return Err(Walk::Corrupt(format!("unexpected marker 0x{marker:02X} at byte {pos}"))),
            _ => {
                let len = match b.get(pos..pos + 2) {
                    Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
                    None => return Err(Walk::Truncated("the file stops inside a segment header".into())),
                };
                if len < 2 {
                    return Err(Walk::Corrupt(format!("segment length {len} at byte {pos}")));
                }
                if pos + len > b.len() {
                    return Err(Walk::Truncated(format!("a segment of {len} bytes at byte {pos} runs past the end")));
                }
                pos += len;
                if marker == 0xDA {
                    saw_scan = true;
                    // Entropy-coded data: runs until a 0xFF that is neither stuffing (0x00) nor a restart marker.
                    loop {
                        match b.get(pos..).and_then(|rest| rest.iter().position(|&x| x == 0xFF)) {
                            None => return Err(Walk::Truncated("the file stops inside the image data".into())),
                            Some(off) => pos += off,
                        }
                        match b.get(pos + 1) {
                            None => return Err(Walk::Truncated("the file stops inside the image data".into())),
                            Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => {
                                pos += if b[pos + 1] == 0xFF { 1 } else { 2 }
                            }
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

const PNG_SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

fn walk_png(b: &[u8]) -> Result<(), Walk> {
    let mut pos = PNG_SIGNATURE.len();
    let mut first = true;
    let mut saw_data = false;
    loop {
        let Some(head) = b.get(pos..pos + 8) else {
            return Err(Walk::Truncated(format!("no IEND chunk; the file stops at byte {}", b.len())));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let end = pos + 8 + len + 4;
        if end > b.len() {
            return Err(Walk::Truncated(format!(
                "chunk {} of {len} bytes runs past the end",
                String::from_utf8_lossy(kind)
            )));
        }
        let crc = u32::from_be_bytes([b[end - 4], b[end - 3], b[end - 2], b[end - 1]]);
        if crc32fast::hash(&b[pos + 4..end - 4]) != crc {
            return Err(Walk::Corrupt(format!("chunk {} fails its CRC", String::from_utf8_lossy(kind))));
        }
        if first && kind != b"IHDR" {
            return Err(Walk::Corrupt("the first chunk is not IHDR".into()));
        }
        first = false;
        saw_data |= kind == b"IDAT";
        if kind == b"IEND" {
            return if saw_data { Ok(()) } else { Err(Walk::Corrupt("no image data (IDAT)".into())) };
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        synthetic_jpeg(w, h, 1).unwrap().bytes
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        synthetic_png(w, h, 2).unwrap().bytes
    }

    #[test]
    fn a_small_file_claiming_too_many_pixels_is_refused_before_it_is_decoded() {
        // 10,000 x 6,000 of one grey: a few hundred KB of PNG, 60 megapixels to decode.
        let img = image::GrayImage::from_pixel(10_000, 6_000, image::Luma([128]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        let err = check_photo(Path::new("bomb.png"), bytes).unwrap_err();
        assert!(matches!(err, PhotoError::TooManyPixels { width: 10_000, height: 6_000, .. }), "{err}");
        assert!(err.to_string().contains("resize it first"));
    }

    #[test]
    fn a_photo_too_large_to_decode_within_the_bound_is_kept_without_a_preview() {
        // 5,200 x 5,000 of 16-bit RGBA: 26 megapixels (within the pixel limit), a small PNG,
        // 208 MB decoded, past the 192 MiB a preview may take.
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
            5_200,
            5_000,
            image::Rgba([40_000, 30_000, 20_000, 65_535]),
        );
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgba16(img)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        let photo = check_photo(Path::new("deep.png"), bytes).unwrap();
        assert_eq!(photo.dimensions, (5_200, 5_000));
        assert!(thumbnail(&photo).is_none(), "decoded past the bound for a preview");
        // A phone's frame of the same size, 8 bits a channel, gets its preview.
        let img = image::RgbImage::from_pixel(5_200, 5_000, image::Rgb([200, 150, 120]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        let preview = thumbnail(&check_photo(Path::new("frame.png"), bytes).unwrap()).expect("a preview");
        let small = image::load_from_memory(&preview).unwrap();
        assert!(small.width() <= THUMBNAIL_PX && small.height() <= THUMBNAIL_PX);
    }

    #[test]
    fn whole_jpeg_and_png_are_accepted_with_dimensions() {
        let p = check_photo(Path::new("a.jpg"), jpeg(320, 200)).unwrap();
        assert_eq!((p.mime, p.dimensions), ("image/jpeg", (320, 200)));
        let p = check_photo(Path::new("a.png"), png(64, 48)).unwrap();
        assert_eq!((p.mime, p.dimensions), ("image/png", (64, 48)));
    }

    #[test]
    fn a_truncated_photo_is_refused_at_every_cut() {
        for bytes in [jpeg(200, 150), png(120, 90)] {
            for cut in [bytes.len() - 1, bytes.len() - 5, bytes.len() / 2, 40, 12] {
                let err = check_photo(Path::new("cut"), bytes[..cut].to_vec()).unwrap_err();
                assert!(
                    matches!(err, PhotoError::Truncated { .. } | PhotoError::Corrupt { .. }),
                    "cut at {cut} of {}: {err}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn text_is_not_a_photo() {
        let err = check_photo(Path::new("notes.txt"), b"patient notes".to_vec()).unwrap_err();
        assert!(matches!(err, PhotoError::NotAnImage(_)));
        assert!(err.to_string().contains("JPEG and PNG"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load_photo(Path::new("/nonexistent/photo.jpg")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/photo.jpg"), "{err}");
    }
}
