//! Denoising networks for Emulsion.
//!
//! - [`unet`]: the DDPM++ UNet of Song et al. 2021 in the layout of EDM's `SongUNet`.
//! - [`precond`]: preconditioning `D(x; s) = c_skip x + c_out F(c_in x, c_noise)` (Karras et al.
//!   2022, Table 1) and the [`Denoise`] trait that samplers see.
//!
//! The networks take a per-sample noise label and know nothing of noise schedules.

pub mod embedding;
pub mod norm;
pub mod precond;
pub mod unet;

pub use precond::{Denoise, Precond, Scalings};
pub use unet::{UNet, UNetConfig};

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;
#[cfg(test)]
pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
