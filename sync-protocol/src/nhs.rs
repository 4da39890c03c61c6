//! The NHS number: ten digits, the last a modulus 11 check digit.
//!
//! Weights 10, 9, ..., 2 multiply the first nine digits; the check digit is 11 minus the
//! remainder of the sum divided by 11, where 11 becomes 0 and 10 means the number is invalid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A syntactically valid NHS number (ten digits with a correct modulus 11 check digit).
///
/// Holding one says nothing about whether it belongs to the patient: that is the separate
/// verification status ([`crate::vocab::NhsVerification`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NhsNumber([u8; 10]);

/// Why a string is not an NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Not ten digits once spaces and dashes are removed.
    #[error("an NHS number has 10 digits; {0:?} has {1}")]
    WrongLength(String, usize),
    /// A character other than a digit, space or dash.
    #[error("an NHS number holds only digits; {0:?} contains {1:?}")]
    NotADigit(String, char),
    /// The check digit does not match (or the remainder gives 10, which no valid number has).
    #[error("{0:?} fails the NHS number check digit (modulus 11): check it was typed correctly")]
    CheckDigit(String),
}

impl NhsNumber {
    /// Parses and checks a number written with or without spaces or dashes ("943 476 5919").
    pub fn parse(text: &str) -> Result<Self, NhsNumberError> {
        let mut digits = [0u8; 10];
        let mut n = 0usize;
        for c in text.chars() {
            if c == ' ' || c == '-' {
                continue;
            }
            let Some(d) = c.to_digit(10) else {
                return Err(NhsNumberError::NotADigit(text.to_string(), c));
            };
            if n < 10 {
                digits[n] = d as u8;
            }
            n += 1;
        }
        if n != 10 {
            return Err(NhsNumberError::WrongLength(text.to_string(), n));
        }
        match check_digit(&digits) {
            Some(check) if check == digits[9] => Ok(NhsNumber(digits)),
            _ => Err(NhsNumberError::CheckDigit(text.to_string())),
        }
    }

    /// The ten digits without separators, as stored.
    pub fn digits(&self) -> String {
        self.0.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// The conventional 3-3-4 grouping used on screen ("943 476 5919").
    pub fn grouped(&self) -> String {
        let d = self.digits();
        format!("{} {} {}", &d[0..3], &d[3..6], &d[6..10])
    }
}

/// The check digit for the first nine digits, or `None` when the remainder makes the number invalid.
fn check_digit(digits: &[u8; 10]) -> Option<u8> {
    let sum: u32 = digits[..9].iter().zip((2..=10u32).rev()).map(|(d, w)| u32::from(*d) * w).sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digits())
    }
}

impl fmt::Debug for NhsNumber {
    // Patient identifiers stay out of debug output and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(***)")
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NhsNumber::parse(s)
    }
}

impl Serialize for NhsNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.digits())
    }
}

impl<'de> Deserialize<'de> for NhsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NhsNumber::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_published_test_numbers() {
        // Numbers from NHS Digital's test data sets.
        for n in ["9434765919", "943 476 5919", "943-476-5919", "9000000009", "4010232137"] {
            assert!(NhsNumber::parse(n).is_ok(), "{n} should be valid");
        }
        assert_eq!(NhsNumber::parse("9434765919").unwrap().grouped(), "943 476 5919");
    }

    #[test]
    fn refuses_a_wrong_check_digit() {
        assert_eq!(NhsNumber::parse("9434765918"), Err(NhsNumberError::CheckDigit("9434765918".into())));
    }

    #[test]
    fn refuses_numbers_whose_remainder_gives_ten() {
        // 1,2,3,4,5,6,7,8,0 -> sum 10+18+24+28+30+30+28+24+0 = 192, 192 % 11 = 5, check 6;
        // find a prefix with remainder 1 (check 10) by search, so the case is really exercised.
        let prefix = (0..1_000_000_000u64)
            .step_by(7919)
            .map(|p| format!("{p:09}"))
            .find(|p| {
                let mut d = [0u8; 10];
                for (i, c) in p.chars().enumerate() {
                    d[i] = c.to_digit(10).unwrap() as u8;
                }
                check_digit(&d).is_none()
            })
            .unwrap();
        for last in 0..10 {
            let n = format!("{prefix}{last}");
            assert!(matches!(NhsNumber::parse(&n), Err(NhsNumberError::CheckDigit(_))), "{n}");
        }
    }

    #[test]
    fn refuses_wrong_length_and_letters() {
        assert!(matches!(NhsNumber::parse("943476591"), Err(NhsNumberError::WrongLength(_, 9))));
        assert!(matches!(NhsNumber::parse("94347659190"), Err(NhsNumberError::WrongLength(_, 11))));
        assert!(matches!(NhsNumber::parse("94347659I9"), Err(NhsNumberError::NotADigit(_, 'I'))));
        assert!(matches!(NhsNumber::parse(""), Err(NhsNumberError::WrongLength(_, 0))));
    }

    #[test]
    fn debug_output_hides_the_number() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert!(!format!("{n:?}").contains("943"));
    }

    proptest! {
        #[test]
        fn exactly_one_last_digit_or_none_is_valid(prefix in "[0-9]{9}") {
            let valid: Vec<_> = (0..10)
                .filter(|d| NhsNumber::parse(&format!("{prefix}{d}")).is_ok())
                .collect();
            prop_assert!(valid.len() <= 1);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = NhsNumber::parse(&s);
        }
    }
}
