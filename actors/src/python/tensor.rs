//! Float tensors (an embedding, a feature map) on a message.
//!
//! The engine's [`Value`] has no tensor variant, so a tensor travels as
//! `Value::Opaque(Arc<TensorF32>)`: shared, never copied, between the stages of one
//! process. A `python` stage receives it as a read-only numpy `float32` array (its bytes
//! in shared memory, like an image's) and any `float32` array it returns becomes one. A
//! Rust stage reads it with [`TensorF32::of`]. Like every `Opaque` value it does not cross
//! a link between machines (the link fails the frame naming the field) and is not
//! written by the CSV sinks.

use std::sync::Arc;

use bytes::Bytes;
use dataflow_engine::Value;

/// A row-major `f32` tensor, its elements stored little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorF32 {
    shape: Vec<usize>,
    data: Bytes,
}

impl TensorF32 {
    /// A tensor of `shape` holding `values` in row-major order; `None` when their
    /// counts differ.
    pub fn new(shape: Vec<usize>, values: &[f32]) -> Option<Self> {
        if elements(&shape)? != values.len() {
            return None;
        }
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Some(TensorF32 {
            shape,
            data: Bytes::from(data),
        })
    }

    /// A tensor over little-endian bytes; `None` when their length does not match `shape`.
    pub fn from_le_bytes(shape: Vec<usize>, data: Bytes) -> Option<Self> {
        if elements(&shape)?.checked_mul(4)? != data.len() {
            return None;
        }
        Some(TensorF32 { shape, data })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, little-endian (what crosses to a worker as is).
    pub fn le_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The elements in row-major order.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// The field value carrying this tensor.
    pub fn into_value(self) -> Value {
        Value::Opaque(Arc::new(self))
    }

    /// The tensor a field value carries, if it carries one.
    pub fn of(value: &Value) -> Option<&TensorF32> {
        match value {
            Value::Opaque(any) => any.downcast_ref::<TensorF32>(),
            _ => None,
        }
    }
}

/// The number of elements of `shape`; `None` on overflow.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_the_little_endian_bytes() {
        let t = TensorF32::new(vec![2, 3], &[0.5, -1.0, 3.25, 1e-7, f32::MAX, -0.0]).unwrap();
        assert_eq!(t.le_bytes().len(), 24);
        let back = TensorF32::from_le_bytes(vec![2, 3], t.le_bytes().clone()).unwrap();
        assert_eq!(back.to_vec(), vec![0.5, -1.0, 3.25, 1e-7, f32::MAX, -0.0]);
        let v = back.clone().into_value();
        assert_eq!(TensorF32::of(&v), Some(&back));
        assert!(TensorF32::of(&Value::Number(1.0)).is_none());
    }

    #[test]
    fn a_shape_that_does_not_match_the_elements_is_refused() {
        assert!(TensorF32::new(vec![2, 2], &[1.0; 3]).is_none());
        assert!(TensorF32::from_le_bytes(vec![4], Bytes::from(vec![0u8; 15])).is_none());
        assert!(TensorF32::new(vec![usize::MAX, 2], &[]).is_none());
        assert_eq!(TensorF32::new(vec![0, 5], &[]).unwrap().to_vec(), Vec::<f32>::new());
    }
}
