//! Denoising networks for Emulsion.
//!
//! - [`unet`]: the DDPM++ UNet of Song et al. 2021 in the layout of EDM's `SongUNet`.
//! - [`precond`]: preconditioning `D(x; s) = c_skip x + c_out F(c_in x, c_noise)` (Karras et al.
//!   2022, Table 1), the consistency-model boundary condition, and the [`Denoise`] trait that
//!   samplers see; [`fdm`]: FDM's critically damped input scale (Wu et al. 2023).
//! - [`network`]: the [`Network`] a preconditioning wraps; [`mlp`]: a small MLP for 2-D toy data.
//!
//! The networks take a per-sample noise label and know nothing of noise schedules.

pub mod embedding;
pub mod fdm;
pub mod flex_conv;
mod flex_group_norm;
pub mod mlp;
pub mod network;
pub mod norm;
pub mod precond;
pub mod songunet;
pub mod unet;

pub use fdm::{FdmBase, FdmScale};
pub use mlp::{Mlp, MlpConfig};
pub use network::Network;
pub use precond::{Denoise, Precond, Scalings};
pub use unet::{UNet, UNetConfig};

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;
#[cfg(test)]
pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
