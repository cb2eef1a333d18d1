"""Free adversarial training (Shafahi et al. 2019) as CF-AMC-SSL uses it, and as plugins/attacks/free with
the run file's reproject_warm_start = true does: one perturbation shaped like the crop batch, created once at
zero and carried across replays and minibatches; each minibatch is replayed m times, each replay one forward,
one backward (weights and delta together) and one optimiser step, then
delta <- clip(delta + a sign(g_delta), +-eps), delta <- clip(x + delta, 0, 1) - x."""
import torch


class FreeTraining:
    def __init__(self, network, loss, optimizer, epsilon=8 / 255, step_size=0.01, replays=3):
        self.network, self.loss, self.optimizer = network, loss, optimizer
        self.epsilon, self.step_size, self.replays = epsilon, step_size, replays
        self.delta = None  # a plain tensor of the training loop, not part of the model

    def minibatch(self, x):
        """Trains on one crop batch x [n * B, C, S, S] in [0, 1], replayed m times; returns the last loss."""
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)
        else:  # the carried perturbation, projected onto the new batch's [0, 1] box
            with torch.no_grad():
                self.delta = (x + self.delta).clamp(0, 1) - x
        for _ in range(self.replays):
            loss = self._replay(x)
        return loss

    def _replay(self, x):
        delta = self.delta.requires_grad_(True)
        self.optimizer.zero_grad()
        loss = self.loss(self.network((x + delta).clamp(0, 1)))
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            step = (delta + self.step_size * delta.grad.sign()).clamp(-self.epsilon, self.epsilon)
            self.delta = (x + step).clamp(0, 1) - x
        return loss.detach()
