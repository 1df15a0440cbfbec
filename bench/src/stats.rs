//! Summaries of repeated measurements and the interleaving order of modes.

use serde::Serialize;

/// Median, minimum and maximum of a set of runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the two middle values for an even count), min and max; `None` when
/// `values` is empty. NaNs are ignored.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Whether a larger value of the figure `name` is better (rates) or worse (latency, CPU,
/// programming time).
pub fn higher_is_better(name: &str) -> bool {
    name.ends_with("_per_s") && !name.contains("cpu")
}

/// `value / baseline` of the medians; `None` when the baseline is zero or missing.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline != 0.0 && baseline.is_finite() && value.is_finite()).then(|| value / baseline)
}

/// The order of `items` in run `run`: rotated by one per run (A B C, B C A, C A B, ...), so
/// every mode takes every position and slow drifts of the machine spread over all modes.
pub fn interleave<T: Clone>(items: &[T], run: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let k = run % items.len();
    items[k..].iter().chain(&items[..k]).cloned().collect()
}

/// `median [min–max]` with a precision fitting the magnitude.
pub fn fmt_summary(s: &Summary) -> String {
    if s.n == 1 {
        return fmt_num(s.median);
    }
    format!(
        "{} [{}–{}]",
        fmt_num(s.median),
        fmt_num(s.min),
        fmt_num(s.max)
    )
}

/// A number with 3–4 significant digits, thousands kept whole.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let s = summarize(&[f64::NAN, 5.0]).unwrap();
        assert_eq!((s.median, s.n), (5.0, 1));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(50.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert!(higher_is_better("conn_per_s"));
        assert!(higher_is_better("gbit_per_s"));
        assert!(!higher_is_better("p99_us"));
        assert!(!higher_is_better("client_cpu_us_per_op"));
    }

    #[test]
    fn interleaving_rotates() {
        let m = ["a", "b", "c"];
        assert_eq!(interleave(&m, 0), ["a", "b", "c"]);
        assert_eq!(interleave(&m, 1), ["b", "c", "a"]);
        assert_eq!(interleave(&m, 2), ["c", "a", "b"]);
        assert_eq!(interleave(&m, 3), ["a", "b", "c"]);
        assert!(interleave::<u8>(&[], 1).is_empty());
    }

    #[test]
    fn formatting() {
        let s = summarize(&[12345.6, 11000.0, 13000.0]).unwrap();
        assert_eq!(fmt_summary(&s), "12346 [11000–13000]");
        assert_eq!(fmt_num(0.12345), "0.123");
    }
}
