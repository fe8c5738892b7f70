//! Tensors <-> ndarray, and the chunking of large payloads.
//!
//! In memory a payload is a list of [`NamedTensor`]s of `f64`. On the wire each tensor is
//! described by a `TensorSpec` in a header and its packed little-endian bytes follow in
//! `TensorChunk`s of at most `max_chunk` bytes. [`Assembler`] rebuilds the tensors on the
//! receiving side and checks everything a peer could get wrong: sizes, order, limits and
//! finiteness.

use ndarray::{ArrayD, IxDyn};
use prost::bytes::Bytes;

use crate::error::TensorError;
use crate::v1::{Dtype, Tensor, TensorChunk, TensorSpec};

/// The default largest chunk: 1 MiB, far under the 8 MiB message limit.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 1 << 20;

/// A named tensor of a model or an update.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub values: ArrayD<f64>,
}

impl NamedTensor {
    pub fn new(name: impl Into<String>, values: ArrayD<f64>) -> Self {
        NamedTensor {
            name: name.into(),
            values,
        }
    }
}

fn dtype_size(dtype: Dtype) -> Option<u64> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F64 | Dtype::U64 => Some(8),
        Dtype::Unspecified => None,
    }
}

/// Encodes tensors as a header's specs and the chunks that follow it.
///
/// Values are written as `dtype` (f32 rounds each value to nearest). Each chunk holds at most
/// `max_chunk` bytes, a whole number of elements.
pub fn encode(
    tensors: &[NamedTensor],
    dtype: Dtype,
    max_chunk: usize,
) -> (Vec<TensorSpec>, Vec<TensorChunk>) {
    let size = dtype_size(dtype).unwrap_or(8) as usize;
    let per_chunk = (max_chunk / size).max(1);
    let mut specs = Vec::with_capacity(tensors.len());
    let mut chunks = Vec::new();
    for (index, tensor) in tensors.iter().enumerate() {
        specs.push(TensorSpec {
            name: tensor.name.clone(),
            dtype: dtype as i32,
            shape: tensor.values.shape().iter().map(|&d| d as u64).collect(),
        });
        let mut offset = 0u64;
        let mut buf = Vec::with_capacity(per_chunk.min(tensor.values.len()) * size);
        for &v in tensor.values.iter() {
            match dtype {
                Dtype::F32 => buf.extend_from_slice(&(v as f32).to_le_bytes()),
                _ => buf.extend_from_slice(&v.to_le_bytes()),
            }
            if buf.len() == per_chunk * size {
                let len = buf.len() as u64;
                chunks.push(TensorChunk {
                    tensor_index: index as u32,
                    offset,
                    data: Bytes::from(std::mem::take(&mut buf)),
                });
                offset += len;
            }
        }
        if !buf.is_empty() {
            chunks.push(TensorChunk {
                tensor_index: index as u32,
                offset,
                data: Bytes::from(buf),
            });
        }
    }
    (specs, chunks)
}

/// Rebuilds tensors from a header's specs and the chunks that follow, checking each step.
#[derive(Debug)]
pub struct Assembler {
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    buffers: Vec<Vec<u8>>,
    max_chunk: usize,
}

impl Assembler {
    /// Starts from a header's specs. `max_elements` bounds the total number of elements the peer
    /// may send, so that a header cannot make the receiver allocate without limit.
    pub fn new(
        specs: Vec<TensorSpec>,
        max_elements: u64,
        max_chunk: usize,
    ) -> Result<Self, TensorError> {
        let mut sizes = Vec::with_capacity(specs.len());
        let mut total: u64 = 0;
        let mut names = std::collections::HashSet::new();
        for spec in &specs {
            if !names.insert(spec.name.as_str()) {
                return Err(TensorError::DuplicateName(spec.name.clone()));
            }
            let elem = Dtype::try_from(spec.dtype)
                .ok()
                .and_then(dtype_size)
                .ok_or_else(|| TensorError::NoDtype {
                    name: spec.name.clone(),
                })?;
            let overflow = || TensorError::ShapeOverflow {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
            };
            let count = spec
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(overflow)?;
            total = total.checked_add(count).ok_or_else(overflow)?;
            if total > max_elements {
                return Err(TensorError::TooLarge {
                    name: spec.name.clone(),
                    declared: total,
                    limit: max_elements,
                });
            }
            sizes.push(count * elem);
        }
        let buffers = sizes.iter().map(|_| Vec::new()).collect();
        Ok(Assembler {
            specs,
            sizes,
            buffers,
            max_chunk,
        })
    }

    /// How many bytes the header's tensors take in all, as they arrive.
    pub fn total_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: TensorChunk) -> Result<(), TensorError> {
        let index = chunk.tensor_index as usize;
        let count = self.specs.len();
        let (Some(spec), Some(&size), Some(buf)) = (
            self.specs.get(index),
            self.sizes.get(index),
            self.buffers.get_mut(index),
        ) else {
            return Err(TensorError::UnknownTensor {
                index: chunk.tensor_index,
                count,
            });
        };
        if chunk.data.len() > self.max_chunk {
            return Err(TensorError::ChunkTooLarge {
                name: spec.name.clone(),
                len: chunk.data.len(),
                limit: self.max_chunk,
            });
        }
        if chunk.offset != buf.len() as u64 {
            return Err(TensorError::Gap {
                name: spec.name.clone(),
                offset: chunk.offset,
                expected: buf.len() as u64,
            });
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if end > size {
            return Err(TensorError::Overrun {
                name: spec.name.clone(),
                end,
                size,
            });
        }
        if buf.is_empty() {
            buf.reserve_exact(size as usize);
        }
        buf.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Finishes: every tensor complete, every value finite.
    pub fn finish(self) -> Result<Vec<NamedTensor>, TensorError> {
        self.finish_staged()?.decode()
    }

    /// Finishes as [`finish`](Assembler::finish) checks, but keeps the tensors as the bytes
    /// that arrived: an `f32` payload holds half the memory of its decoded `f64` values.
    pub fn finish_staged(self) -> Result<Staged, TensorError> {
        for ((spec, &size), buf) in self.specs.iter().zip(&self.sizes).zip(&self.buffers) {
            if buf.len() as u64 != size {
                return Err(TensorError::Length {
                    name: spec.name.clone(),
                    expected: size,
                    actual: buf.len() as u64,
                });
            }
            // Masked ring elements are any 64 bits; only real values are checked for finiteness.
            if is_masked(spec) {
                continue;
            }
            if let Some(index) = wire_values_of(buf, width_of(spec)).position(|v| !v.is_finite()) {
                return Err(TensorError::NotFinite {
                    name: spec.name.clone(),
                    index,
                });
            }
        }
        Ok(Staged {
            specs: self.specs,
            buffers: self.buffers,
        })
    }
}

/// The values of one tensor's wire bytes, `width` bytes each (`f32` or `f64`, little-endian).
fn wire_values_of(buf: &[u8], width: usize) -> impl Iterator<Item = f64> + '_ {
    buf.chunks_exact(width).map(|b| match *b {
        [a, b, c, d] => f64::from(f32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => f64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => f64::NAN,
    })
}

/// Tensors received whole and checked (complete, every value finite), kept as their wire bytes
/// until they are read: what a coordinator stages of an update before it folds it in.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    specs: Vec<TensorSpec>,
    buffers: Vec<Vec<u8>>,
}

impl Staged {
    /// The tensors' specs, in order.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// The number of values, over all tensors.
    pub fn len(&self) -> usize {
        self.specs
            .iter()
            .zip(&self.buffers)
            .map(|(spec, buf)| buf.len() / width_of(spec))
            .sum()
    }

    /// Whether there are no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(Vec::len).sum()
    }

    /// The masked ring elements of tensors that are all `DTYPE_U64`, tensor after tensor, in
    /// the flat layout of a model (secure aggregation's masked updates).
    pub fn masked(&self) -> Result<Vec<u64>, TensorError> {
        let mut out = Vec::with_capacity(self.bytes() / 8);
        for (spec, buf) in self.specs.iter().zip(&self.buffers) {
            if !is_masked(spec) {
                return Err(TensorError::NotMasked {
                    name: spec.name.clone(),
                });
            }
            out.extend(buf.chunks_exact(8).map(|b| {
                let mut word = [0u8; 8];
                word.copy_from_slice(b);
                u64::from_le_bytes(word)
            }));
        }
        Ok(out)
    }

    /// Every value, tensor after tensor, each in its tensor's row-major order: the flat layout
    /// of a model. Tensors of real values only ([`Staged::masked`] reads masked ones).
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.specs
            .iter()
            .zip(&self.buffers)
            .flat_map(|(spec, buf)| wire_values_of(buf, width_of(spec)))
    }

    /// Checks that the tensors have the names and shapes of `expected`, in order, and hold
    /// real values.
    pub fn check_layout(&self, expected: &[NamedTensor]) -> Result<(), TensorError> {
        if let Some(spec) = self.specs.iter().find(|s| is_masked(s)) {
            return Err(TensorError::NotReal {
                name: spec.name.clone(),
            });
        }
        self.check_shapes(expected)
    }

    /// Checks that the tensors have the names and shapes of `expected`, in order, and hold
    /// masked ring elements: a secure aggregation's masked update.
    pub fn check_masked_layout(&self, expected: &[NamedTensor]) -> Result<(), TensorError> {
        if let Some(spec) = self.specs.iter().find(|s| !is_masked(s)) {
            return Err(TensorError::NotMasked {
                name: spec.name.clone(),
            });
        }
        self.check_shapes(expected)
    }

    fn check_shapes(&self, expected: &[NamedTensor]) -> Result<(), TensorError> {
        if expected.len() != self.specs.len() {
            return Err(TensorError::Count {
                expected: expected.len(),
                actual: self.specs.len(),
            });
        }
        for (e, a) in expected.iter().zip(&self.specs) {
            if e.name != a.name {
                return Err(TensorError::Name {
                    expected: e.name.clone(),
                    actual: a.name.clone(),
                });
            }
            let same = e.values.ndim() == a.shape.len()
                && e.values
                    .shape()
                    .iter()
                    .zip(&a.shape)
                    .all(|(&x, &y)| x as u64 == y);
            if !same {
                return Err(TensorError::Shape {
                    name: e.name.clone(),
                    expected: e.values.shape().to_vec(),
                    actual: a.shape.iter().map(|&d| d as usize).collect(),
                });
            }
        }
        Ok(())
    }

    /// The tensors, decoded to `f64`.
    pub fn decode(self) -> Result<Vec<NamedTensor>, TensorError> {
        let mut out = Vec::with_capacity(self.specs.len());
        for (spec, buf) in self.specs.into_iter().zip(self.buffers) {
            let tensor = decode_tensor(spec, &buf)?;
            drop(buf);
            out.push(tensor);
        }
        Ok(out)
    }
}

/// Whether a spec's elements are masked ring elements (`DTYPE_U64`).
fn is_masked(spec: &TensorSpec) -> bool {
    Dtype::try_from(spec.dtype) == Ok(Dtype::U64)
}

/// Masked ring elements as tensors of the names and shapes of `layout` (`DTYPE_U64`), in
/// chunks of at most `max_chunk` bytes: a secure aggregation's masked update. `values` is in
/// the layout's flat order and as long as it.
pub fn encode_masked(
    layout: &[NamedTensor],
    values: &[u64],
    max_chunk: usize,
) -> (Vec<TensorSpec>, Vec<TensorChunk>) {
    let per_chunk = (max_chunk / 8).max(1);
    let mut specs = Vec::with_capacity(layout.len());
    let mut chunks = Vec::new();
    let mut rest = values;
    for (index, tensor) in layout.iter().enumerate() {
        specs.push(TensorSpec {
            name: tensor.name.clone(),
            dtype: Dtype::U64 as i32,
            shape: tensor.values.shape().iter().map(|&d| d as u64).collect(),
        });
        let (own, next) = rest.split_at(tensor.values.len().min(rest.len()));
        rest = next;
        for (i, piece) in own.chunks(per_chunk).enumerate() {
            let data: Vec<u8> = piece.iter().flat_map(|v| v.to_le_bytes()).collect();
            chunks.push(TensorChunk {
                tensor_index: index as u32,
                offset: (i * per_chunk * 8) as u64,
                data: Bytes::from(data),
            });
        }
    }
    (specs, chunks)
}

/// One tensor's complete wire bytes (checked for length), decoded to `f64`.
fn decode_tensor(spec: TensorSpec, bytes: &[u8]) -> Result<NamedTensor, TensorError> {
    if is_masked(&spec) {
        return Err(TensorError::NotReal { name: spec.name });
    }
    let values: Vec<f64> = wire_values_of(bytes, width_of(&spec)).collect();
    let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
    let values =
        ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|_| TensorError::ShapeOverflow {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
        })?;
    Ok(NamedTensor::new(spec.name, values))
}

/// The bytes of one element of a checked spec (`f32` or `f64`).
fn width_of(spec: &TensorSpec) -> usize {
    match Dtype::try_from(spec.dtype) {
        Ok(Dtype::F32) => 4,
        _ => 8,
    }
}

/// Packs tensors whole (for storage or small messages), as `dtype`.
pub fn to_whole(tensors: &[NamedTensor], dtype: Dtype) -> Vec<Tensor> {
    let (specs, chunks) = encode(tensors, dtype, usize::MAX);
    let mut data: Vec<Bytes> = vec![Bytes::new(); specs.len()];
    for chunk in chunks {
        if let Some(slot) = data.get_mut(chunk.tensor_index as usize) {
            *slot = chunk.data;
        }
    }
    specs
        .into_iter()
        .zip(data)
        .map(|(spec, data)| Tensor {
            spec: Some(spec),
            data,
        })
        .collect()
}

/// Unpacks whole tensors, with the same checks as a chunked stream, decoding each straight
/// from its bytes (no copy of them is made).
pub fn from_whole(tensors: &[Tensor], max_elements: u64) -> Result<Vec<NamedTensor>, TensorError> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| t.spec.clone().unwrap_or_default())
        .collect();
    // The specs' checks: names, dtypes, sizes within the limit.
    let assembler = Assembler::new(specs, max_elements, usize::MAX)?;
    let mut out = Vec::with_capacity(tensors.len());
    for ((spec, size), tensor) in assembler
        .specs
        .into_iter()
        .zip(assembler.sizes)
        .zip(tensors)
    {
        if tensor.data.len() as u64 != size {
            return Err(TensorError::Length {
                name: spec.name,
                expected: size,
                actual: tensor.data.len() as u64,
            });
        }
        if let Some(index) =
            wire_values_of(&tensor.data, width_of(&spec)).position(|v| !v.is_finite())
        {
            return Err(TensorError::NotFinite {
                name: spec.name,
                index,
            });
        }
        out.push(decode_tensor(spec, &tensor.data)?);
    }
    Ok(out)
}

/// Checks that `actual` has the same names and shapes as `expected`, in order.
pub fn check_same_layout(
    expected: &[NamedTensor],
    actual: &[NamedTensor],
) -> Result<(), TensorError> {
    if expected.len() != actual.len() {
        return Err(TensorError::Count {
            expected: expected.len(),
            actual: actual.len(),
        });
    }
    for (e, a) in expected.iter().zip(actual) {
        if e.name != a.name {
            return Err(TensorError::Name {
                expected: e.name.clone(),
                actual: a.name.clone(),
            });
        }
        if e.values.shape() != a.values.shape() {
            return Err(TensorError::Shape {
                name: e.name.clone(),
                expected: e.values.shape().to_vec(),
                actual: a.values.shape().to_vec(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn masked_ring_elements_travel_exactly_and_are_never_read_as_real_values() {
        let layout = sample();
        // Any 64 bits: a NaN's bit pattern and infinities' included.
        let values: Vec<u64> = (0..3001u64)
            .map(|i| match i {
                0 => f64::NAN.to_bits(),
                1 => f64::INFINITY.to_bits(),
                _ => i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            })
            .collect();
        let (specs, chunks) = encode_masked(&layout, &values, 4096);
        let mut assembler = Assembler::new(specs, 10_000, 4096).unwrap();
        for chunk in chunks {
            assert!(chunk.data.len() <= 4096);
            assembler.push(chunk).unwrap();
        }
        let staged = assembler.finish_staged().unwrap();
        assert_eq!(staged.masked().unwrap(), values);
        staged.check_masked_layout(&layout).unwrap();
        assert!(matches!(
            staged.check_layout(&layout),
            Err(TensorError::NotReal { .. })
        ));
        assert!(matches!(
            staged.clone().decode(),
            Err(TensorError::NotReal { .. })
        ));
        // Real values are not taken for masked ones.
        let (specs, chunks) = encode(&layout, Dtype::F32, 4096);
        let mut assembler = Assembler::new(specs, 10_000, 4096).unwrap();
        for chunk in chunks {
            assembler.push(chunk).unwrap();
        }
        let real = assembler.finish_staged().unwrap();
        assert!(matches!(real.masked(), Err(TensorError::NotMasked { .. })));
        assert!(real.check_masked_layout(&layout).is_err());
    }

    fn sample() -> Vec<NamedTensor> {
        let w = ArrayD::from_shape_fn(IxDyn(&[3, 1000]), |ix| (ix[0] * 1000 + ix[1]) as f64 * 0.5);
        let b = ArrayD::from_elem(IxDyn(&[]), -2.25);
        vec![NamedTensor::new("weights", w), NamedTensor::new("bias", b)]
    }

    fn assemble(
        specs: Vec<TensorSpec>,
        chunks: Vec<TensorChunk>,
    ) -> Result<Vec<NamedTensor>, TensorError> {
        let mut a = Assembler::new(specs, 1 << 20, 4096)?;
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }

    #[test]
    fn round_trips_through_small_chunks() {
        let tensors = sample();
        let (specs, chunks) = encode(&tensors, Dtype::F64, 4096);
        // 3000 f64 = 24000 bytes in chunks of 4096 bytes = 512 elements: 6 chunks, plus the bias.
        assert_eq!(chunks.len(), 7);
        assert!(chunks.iter().all(|c| c.data.len() <= 4096));
        assert_eq!(assemble(specs, chunks).unwrap(), tensors);
    }

    #[test]
    fn staged_tensors_read_as_the_decoded_ones_and_check_their_layout() {
        let tensors = sample();
        for dtype in [Dtype::F32, Dtype::F64] {
            let (specs, chunks) = encode(&tensors, dtype, 4096);
            let mut a = Assembler::new(specs, 1 << 20, 4096).unwrap();
            for c in chunks {
                a.push(c).unwrap();
            }
            let staged = a.finish_staged().unwrap();
            assert_eq!(staged.len(), 3001);
            assert_eq!(
                staged.bytes(),
                3001 * if dtype == Dtype::F32 { 4 } else { 8 }
            );
            assert_eq!(staged.check_layout(&tensors), Ok(()));
            let flat: Vec<f64> = tensors
                .iter()
                .flat_map(|t| t.values.iter().copied())
                .collect();
            assert_eq!(staged.values().collect::<Vec<_>>(), flat);
            assert_eq!(staged.clone().decode().unwrap(), tensors);
            let mut other = tensors.clone();
            other[0].values = ArrayD::zeros(IxDyn(&[1000, 3]));
            assert!(matches!(
                staged.check_layout(&other),
                Err(TensorError::Shape { .. })
            ));
            assert!(matches!(
                staged.check_layout(&tensors[..1]),
                Err(TensorError::Count { .. })
            ));
        }
    }

    #[test]
    fn whole_tensors_round_trip() {
        let tensors = sample();
        let whole = to_whole(&tensors, Dtype::F64);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].data.len(), 3000 * 8);
        assert_eq!(from_whole(&whole, 1 << 20).unwrap(), tensors);
    }

    #[test]
    fn bytes_are_little_endian() {
        let t = vec![NamedTensor::new("x", ArrayD::from_elem(IxDyn(&[1]), 1.0))];
        let (_, chunks) = encode(&t, Dtype::F32, 4096);
        // 1.0f32 is 0x3F800000.
        assert_eq!(&chunks[0].data[..], &[0x00, 0x00, 0x80, 0x3F]);
    }

    #[test]
    fn f32_rounds_to_nearest() {
        let t = vec![NamedTensor::new("x", ArrayD::from_elem(IxDyn(&[1]), 0.1))];
        let (specs, chunks) = encode(&t, Dtype::F32, 4096);
        let back = assemble(specs, chunks).unwrap();
        assert_eq!(back[0].values[[0]], f64::from(0.1f32));
    }

    #[test]
    fn refuses_what_a_peer_could_get_wrong() {
        let (specs, chunks) = encode(&sample(), Dtype::F64, 4096);
        // A missing chunk leaves a gap.
        let mut skipped = chunks.clone();
        skipped.remove(1);
        assert!(matches!(
            assemble(specs.clone(), skipped),
            Err(TensorError::Gap { .. })
        ));
        // A truncated stream is incomplete.
        let truncated = chunks[..3].to_vec();
        assert!(matches!(
            assemble(specs.clone(), truncated),
            Err(TensorError::Length { .. })
        ));
        // A NaN is refused with its position.
        let mut nan = chunks.clone();
        let mut data = nan[0].data.to_vec();
        data[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
        nan[0].data = Bytes::from(data);
        assert_eq!(
            assemble(specs.clone(), nan),
            Err(TensorError::NotFinite {
                name: "weights".into(),
                index: 1
            })
        );
        // A header that asks for too much memory is refused before anything is allocated.
        let huge = vec![TensorSpec {
            name: "w".into(),
            dtype: Dtype::F32 as i32,
            shape: vec![1 << 40],
        }];
        assert!(matches!(
            Assembler::new(huge, 1 << 20, 4096),
            Err(TensorError::TooLarge { .. })
        ));
        let overflow = vec![TensorSpec {
            name: "w".into(),
            dtype: Dtype::F32 as i32,
            shape: vec![u64::MAX, 3],
        }];
        assert!(matches!(
            Assembler::new(overflow, 1 << 20, 4096),
            Err(TensorError::ShapeOverflow { .. })
        ));
        // A chunk naming a tensor that does not exist.
        let mut bad_index = chunks.clone();
        bad_index[0].tensor_index = 9;
        assert!(matches!(
            assemble(specs.clone(), bad_index),
            Err(TensorError::UnknownTensor { .. })
        ));
        // A dtype of zero.
        let mut no_dtype = specs.clone();
        no_dtype[0].dtype = 0;
        assert!(matches!(
            assemble(no_dtype, chunks),
            Err(TensorError::NoDtype { .. })
        ));
    }
}
