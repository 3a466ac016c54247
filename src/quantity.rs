//! Kubernetes resource quantities (`500m`, `64Mi`, `2`, `1e3`): parsing and the few conversions
//! procnode needs (bytes, millicores, division for `resourceFieldRef`).
//!
//! A quantity is held exactly as an integer count of nano-units, which covers every suffix from
//! `n` to `E`/`Ei` without floating-point rounding.

use std::fmt;
use std::str::FromStr;

const NANO: i128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Kubernetes quantity (examples: 500m, 2, 64Mi, 1G)")]
pub struct QuantityError(pub String);

impl Quantity {
    pub fn from_units(units: i128) -> Quantity {
        Quantity {
            nanos: units * NANO,
        }
    }

    pub fn from_milli(milli: i128) -> Quantity {
        Quantity {
            nanos: milli * 1_000_000,
        }
    }

    /// The value in whole units, rounded up (as Kubernetes does for `resourceFieldRef`).
    pub fn ceil_units(&self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The value in bytes when it is a whole non-negative number.
    pub fn to_bytes(&self) -> Option<u64> {
        (self.nanos >= 0)
            .then(|| u64::try_from(self.ceil_units()).ok())
            .flatten()
    }

    pub fn milli(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// `self / divisor`, rounded up, as the downward API's `resourceFieldRef` reports it.
    pub fn div_ceil_by(&self, divisor: &Quantity) -> Option<i128> {
        (divisor.nanos > 0).then(|| div_ceil(self.nanos, divisor.nanos))
    }

    pub fn saturating_sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: (self.nanos - other.nanos).max(0),
        }
    }

    /// Canonical form for CPU: whole cores when exact, else millicores.
    pub fn format_cpu(&self) -> String {
        let m = self.milli();
        if m % 1000 == 0 {
            format!("{}", m / 1000)
        } else {
            format!("{m}m")
        }
    }

    /// Canonical form for byte amounts: `Ki` when divisible (as the kubelet reports memory), else bytes.
    pub fn format_bytes(&self) -> String {
        let b = self.ceil_units();
        if b != 0 && b % 1024 == 0 {
            format!("{}Ki", b / 1024)
        } else {
            format!("{b}")
        }
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || QuantityError(s.to_string());
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        let (sign, body) = match t.as_bytes()[0] {
            b'-' => (-1i128, &t[1..]),
            b'+' => (1, &t[1..]),
            _ => (1, t),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        // value = digits * 10^-frac_len * multiplier
        let digits: String = format!("{int_part}{frac_part}");
        let digits: i128 = digits.parse().map_err(|_| err())?;
        let frac_len = frac_part.len() as u32;
        let (mul_num, mul_den): (i128, i128) = match suffix {
            "" => (1, 1),
            "n" => (1, NANO),
            "u" => (1, 1_000_000),
            "m" => (1, 1_000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            exp if exp.starts_with(['e', 'E']) => {
                let e: i32 = exp[1..].parse().map_err(|_| err())?;
                if !(-9..=18).contains(&e) {
                    return Err(err());
                }
                if e >= 0 {
                    (10i128.pow(e as u32), 1)
                } else {
                    (1, 10i128.pow((-e) as u32))
                }
            }
            _ => return Err(err()),
        };
        let scaled = digits
            .checked_mul(NANO)
            .and_then(|v| v.checked_mul(mul_num))
            .ok_or_else(err)?;
        // A fraction with more digits than i128 holds is refused, not a panic.
        let den = 10i128
            .checked_pow(frac_len)
            .and_then(|d| d.checked_mul(mul_den))
            .ok_or_else(err)?;
        Ok(Quantity {
            nanos: sign * div_ceil(scaled, den),
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_suffix_family() {
        assert_eq!(q("500m").milli(), 500);
        assert_eq!(q("2").milli(), 2000);
        assert_eq!(q("0.5").milli(), 500);
        assert_eq!(q("64Mi").to_bytes(), Some(64 << 20));
        assert_eq!(q("1G").to_bytes(), Some(1_000_000_000));
        assert_eq!(q("1e3").to_bytes(), Some(1000));
        assert_eq!(q("1.5Gi").to_bytes(), Some(3 << 29));
        assert_eq!(q("100n").milli(), 1, "rounds up to a millicore");
    }

    #[test]
    fn rejects_garbage() {
        // (The last: a denormal float written out in full, 323 fractional digits, once made
        // the fraction's denominator overflow and panic; the fuzz tier found it.)
        let tiny = format!("0.{}373", "0".repeat(320));
        for bad in ["", "abc", "1.2.3", "12Zi", "m", "1e99", tiny.as_str()] {
            assert!(
                bad.parse::<Quantity>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn divides_like_the_downward_api() {
        assert_eq!(q("256Mi").div_ceil_by(&q("1Mi")), Some(256));
        assert_eq!(q("1").div_ceil_by(&q("1m")), Some(1000));
        assert_eq!(q("250m").div_ceil_by(&q("1")), Some(1), "cpu rounds up");
        assert_eq!(q("1").div_ceil_by(&q("0")), None);
    }

    #[test]
    fn formats_like_the_kubelet() {
        assert_eq!(q("2").format_cpu(), "2");
        assert_eq!(q("1900m").format_cpu(), "1900m");
        assert_eq!(Quantity::from_units(16 << 30).format_bytes(), "16777216Ki");
        assert_eq!(Quantity::from_units(1000).format_bytes(), "1000");
    }
}
