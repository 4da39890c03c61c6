//! Call audio on the node: WAV files in and out, and what each party plays and records.
//!
//! Audio is 8 kHz mono 16-bit inside outpost (`sync_protocol::voice`). A WAV file of another
//! rate or with several channels is mixed down and resampled (linear interpolation) on the way
//! in; recordings are written at 8 kHz mono.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sync_protocol::voice::SAMPLE_RATE;

/// Why audio could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file is missing, unreadable or not a PCM WAV file.
    #[error("{path}: not a readable PCM WAV file: {detail}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The recording could not be written.
    #[error("{path}: cannot write the recording: {detail}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// What a party of a call plays into it and where it records what it hears (kept in the node's
/// local meta table under `media/<call>`, never synced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPlan {
    /// A WAV file to send (the call ends when it does, on the requester's side).
    pub play: Option<PathBuf>,
    /// A WAV file to write what arrives.
    pub record: Option<PathBuf>,
}

/// The meta key of a call's media plan.
pub fn plan_key(call: &str) -> String {
    format!("media/{call}")
}

/// The sample rates a WAV file to play may have (it is resampled to 8 kHz).
const MIN_WAV_RATE: u32 = 4_000;
const MAX_WAV_RATE: u32 = 192_000;
/// The longest file a call plays: an hour, as long as a call lasts.
const MAX_WAV_SECONDS: u64 = 3_600;

/// Reads a PCM WAV file as 8 kHz mono samples.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, MediaError> {
    let err = |detail: String| MediaError::Read { path: path.to_path_buf(), detail };
    let mut reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(err(format!(
            "{} bits {:?}; 16-bit integer PCM is needed",
            spec.bits_per_sample, spec.sample_format
        )));
    }
    if !(MIN_WAV_RATE..=MAX_WAV_RATE).contains(&spec.sample_rate) {
        return Err(err(format!(
            "a sample rate of {} Hz; {MIN_WAV_RATE} to {MAX_WAV_RATE} Hz is needed",
            spec.sample_rate
        )));
    }
    let channels = usize::from(spec.channels.max(1));
    let seconds = u64::from(reader.duration()) / u64::from(spec.sample_rate);
    if seconds > MAX_WAV_SECONDS {
        return Err(err(format!("{seconds} s of audio; a call plays at most {MAX_WAV_SECONDS} s")));
    }
    let raw: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?;
    let mono: Vec<f32> =
        raw.chunks(channels).map(|c| c.iter().map(|s| f32::from(*s)).sum::<f32>() / c.len() as f32).collect();
    if spec.sample_rate == SAMPLE_RATE || mono.is_empty() {
        return Ok(mono.into_iter().map(|s| s as i16).collect());
    }
    let ratio = f64::from(spec.sample_rate) / f64::from(SAMPLE_RATE);
    let n = (mono.len() as f64 / ratio) as usize;
    Ok((0..n)
        .map(|i| {
            let x = i as f64 * ratio;
            let j = x as usize;
            let frac = (x - j as f64) as f32;
            let a = mono[j.min(mono.len() - 1)];
            let b = mono[(j + 1).min(mono.len() - 1)];
            (a + (b - a) * frac) as i16
        })
        .collect())
}

/// Writes 8 kHz mono samples as a WAV file.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<(), MediaError> {
    let err = |detail: String| MediaError::Write { path: path.to_path_buf(), detail };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| err(e.to_string()))?;
    for s in samples {
        w.write_sample(*s).map_err(|e| err(e.to_string()))?;
    }
    w.finalize().map_err(|e| err(e.to_string()))
}

/// A speech-like test signal at 8 kHz: voiced syllables four a second on a gently gliding
/// pitch, harmonics shaped by two formants, and a pause every two seconds. For demos and tests
/// (no recorded voice ships with outpost).
pub fn synthetic_speech(seconds: f64) -> Vec<i16> {
    let rate = f64::from(SAMPLE_RATE);
    let n = (seconds * rate) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let syllable = (t * 4.0).fract();
            let envelope = if (t * 0.5).fract() > 0.85 { 0.0 } else { (std::f64::consts::PI * syllable).sin().powi(2) };
            let f0 = 120.0 + 20.0 * (t * 0.7).sin();
            let mut v = 0.0;
            for h in 1..=12 {
                let f = f0 * f64::from(h);
                let formant =
                    (-((f - 700.0) / 300.0).powi(2)).exp() + 0.6 * (-((f - 1200.0) / 400.0).powi(2)).exp() + 0.1;
                v += formant * (2.0 * std::f64::consts::PI * f * t).sin() / f64::from(h).sqrt();
            }
            (envelope * v * 5000.0).clamp(-32000.0, 32000.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stereo_sixteen_khz_file_comes_in_as_eight_khz_mono() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&p, spec).expect("create");
        for i in 0..16_000 {
            w.write_sample((i % 100) as i16).expect("write");
            w.write_sample((i % 100) as i16).expect("write");
        }
        w.finalize().expect("finalize");
        let s = read_wav(&p).expect("read");
        assert_eq!(s.len(), 8_000);
        let out = dir.path().join("out.wav");
        write_wav(&out, &s).expect("write");
        assert_eq!(read_wav(&out).expect("read back"), s);
    }

    #[test]
    fn a_file_that_is_not_a_wav_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("x.wav");
        std::fs::write(&p, b"not audio").expect("write");
        let e = read_wav(&p).expect_err("refused");
        assert!(e.to_string().contains("not a readable PCM WAV file"), "{e}");
    }
}
