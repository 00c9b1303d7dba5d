//! A bounds-checked face of faer's matmul, and the per-thread scratch buffers.
//!
//! faer's strided views are built from raw pointers and strides; [`matmul`] takes slices with
//! their shapes and strides, checks that every element the product touches lies inside them, and
//! only then builds the views. The scratch buffers live in thread-locals of the rayon workers, so a training loop that
//! calls the op thousands of times allocates them once per thread.

use crate::element::Real;
use crate::error::{Error, Result};
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use std::cell::RefCell;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, A> {
    pub data: &'a [A],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, A> Mat<'a, A> {
    /// A row-major matrix with leading dimension `ld`.
    pub fn rows(data: &'a [A], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major `cols x rows` matrix with leading dimension `ld`.
    pub fn transposed(data: &'a [A], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: 1,
            cs: ld,
        }
    }
}

/// One past the largest index a `rows x cols` view with these strides reads.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

fn check(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    match span(rows, cols, rs, cs) {
        Some(s) if s <= len && rs <= isize::MAX as usize && cs <= isize::MAX as usize => Ok(()),
        _ => Err(Error::Shape(format!(
            "conv2d: internal {what} view {rows}x{cols} (strides {rs}, {cs}) exceeds its {len} elements"
        ))),
    }
}

/// `dst = lhs * rhs` (or `dst += lhs * rhs` with `accumulate`), `dst` row-major with leading
/// dimension `ld`. Every view is checked against its slice before faer sees a pointer.
pub fn matmul<A: Real + ComplexField>(
    dst: &mut [A],
    ld: usize,
    accumulate: bool,
    lhs: Mat<'_, A>,
    rhs: Mat<'_, A>,
    par: Par,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k {
        return Err(Error::Shape(format!(
            "conv2d: internal product of {m}x{k} and {}x{n} matrices",
            rhs.rows
        )));
    }
    check("output", dst.len(), m, n, ld, 1)?;
    check("left", lhs.data.len(), m, k, lhs.rs, lhs.cs)?;
    check("right", rhs.data.len(), k, n, rhs.rs, rhs.cs)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * ld..i * ld + n].fill(A::ZERO);
            }
        }
        return Ok(());
    }
    // SAFETY: the three views were checked above to lie inside their slices (every index
    // `(i, j) -> i * rs + j * cs` with i < rows, j < cols is below the slice length, and the
    // strides fit in isize); `dst` is borrowed mutably, so it aliases neither operand, and the
    // views live only for this call.
    let (dst, lhs, rhs) = unsafe {
        (
            MatMut::from_raw_parts_mut(dst.as_mut_ptr(), m, n, ld as isize, 1),
            MatRef::from_raw_parts(lhs.data.as_ptr(), m, k, lhs.rs as isize, lhs.cs as isize),
            MatRef::from_raw_parts(rhs.data.as_ptr(), k, n, rhs.rs as isize, rhs.cs as isize),
        )
    };
    let beta = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    faer::linalg::matmul::matmul(dst, beta, lhs, rhs, A::ONE, par);
    Ok(())
}

/// Compute types of the conv kernels: faer multiplies them, and each has a per-thread scratch buffer.
pub trait Scratch: Real + ComplexField + Default {
    /// Runs `f` on a buffer of at least `len` elements (contents unspecified), reusing this
    /// thread's buffer when it is free. A nested call on the same thread gets a fresh one.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! impl_scratch {
    ($t:ty, $key:ident) => {
        thread_local! {
            static $key: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }
        impl Scratch for $t {
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                $key.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                        f(&mut buf[..len])
                    }
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }
        }
    };
}
impl_scratch!(f32, SCRATCH_F32);
impl_scratch!(f64, SCRATCH_F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive_with_strides_and_accumulation() {
        let (m, k, n) = (5, 7, 9);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 13) as f64 - 6.0).collect();
        // b stored transposed (n x k row-major) to exercise the column stride.
        let bt: Vec<f64> = (0..n * k).map(|i| (i % 7) as f64 * 0.5).collect();
        let ld = n + 3;
        let mut c = vec![1.0; m * ld];
        let lhs = Mat::rows(&a, m, k, k);
        let rhs = Mat::transposed(&bt, k, n, k);
        matmul(&mut c, ld, true, lhs, rhs, Par::Seq).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 1.0 + (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f64>();
                assert_eq!(c[i * ld + j], want);
            }
        }
        assert_eq!(c[n], 1.0, "padding columns are left alone");
        let short = Mat::rows(&a[..m * k - 1], m, k, k);
        assert!(matmul(&mut c, ld, false, short, rhs, Par::Seq).is_err());
    }
}
