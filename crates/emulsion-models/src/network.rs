//! What a preconditioning wraps: any module mapping `(c_in x, c_noise, class)` to an output of
//! the same shape. The UNet is the real one; tests also use tiny networks (an MLP on 2-D data, a
//! free output tensor) so that objectives can be trained and differentiated by hand.

use burn::prelude::*;

use crate::UNet;

/// A raw network `F(x, c_noise, y)`.
pub trait Network<B: Backend>: Module<B> {
    /// # Shapes
    /// - `x`: `[N, C, H, W]`, `noise_labels`: `[N]`, `class_labels`: `[N]`; returns `[N, C, H, W]`.
    fn forward(&self, x: Tensor<B, 4>, noise_labels: Tensor<B, 1>, class_labels: Option<Tensor<B, 1, Int>>) -> Tensor<B, 4>;

    /// Classes the network is conditioned on (0: unconditional).
    fn num_classes(&self) -> usize {
        0
    }

    /// The label index that means "no class" (classifier-free guidance), if conditional.
    fn null_label(&self) -> Option<usize> {
        let classes = self.num_classes();
        (classes > 0).then_some(classes)
    }

    /// Whether a forward pass draws from the backend's generator (dropout masks, in training).
    /// Passes computed at once on Burn's CPU backends, which keep one generator per process,
    /// must then take turns.
    fn draws_in_forward(&self) -> bool {
        true
    }
}

impl<B: Backend> Network<B> for UNet<B> {
    fn forward(&self, x: Tensor<B, 4>, noise_labels: Tensor<B, 1>, class_labels: Option<Tensor<B, 1, Int>>) -> Tensor<B, 4> {
        UNet::forward(self, x, noise_labels, class_labels)
    }

    fn num_classes(&self) -> usize {
        UNet::num_classes(self)
    }

    fn draws_in_forward(&self) -> bool {
        UNet::draws_in_forward(self)
    }
}
