//! Named f32 tensors in the official PyTorch layout: what every reader produces (our
//! safetensors, official `.pth`, Hugging Face files) and what the model loads from.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

/// A dense f32 tensor with its shape, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// A tensor from its shape and values; panics if they disagree (a bug, not bad input).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} vs {} values",
            data.len()
        );
        Self { shape, data }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The transpose of a 2-D tensor.
    pub fn transpose2(&self) -> RawTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        RawTensor::new(vec![c, r], out)
    }

    /// The values of a burn tensor, read back to the host.
    pub(crate) fn from_tensor<const D: usize>(t: Tensor<D>) -> RawTensor {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted to f32 above");
        RawTensor::new(shape, data)
    }

    /// A burn tensor on `device` holding these values.
    pub(crate) fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }
}

/// Official tensor names → values.
pub type TensorMap = BTreeMap<String, RawTensor>;
