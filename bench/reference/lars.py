"""LARS around a torch optimizer, as EMP-SSL's reference wraps SGD (host/train/optimizer.cpp does the same):
for each parameter that is not 1-D and has non-zero norms,
g <- (g + wd p) * min(eta |p| / (|g| + wd |p| + eps) / lr, 1); weight decay lives only here, so 1-D
parameters (biases, BatchNorm) get neither scaling nor decay."""
import torch


class Lars:
    def __init__(self, optimizer, eta=0.005, clip=True, eps=1e-8, exclude_1d=True):
        self.optimizer, self.eta, self.clip, self.eps, self.exclude_1d = optimizer, eta, clip, eps, exclude_1d

    def zero_grad(self):
        self.optimizer.zero_grad()

    @torch.no_grad()
    def step(self):
        decays = [group["weight_decay"] for group in self.optimizer.param_groups]
        for group, decay in zip(self.optimizer.param_groups, decays):
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is not None and not (self.exclude_1d and p.ndim == 1):
                    self._rescale(p, group["lr"], decay)
        self.optimizer.step()
        for group, decay in zip(self.optimizer.param_groups, decays):
            group["weight_decay"] = decay

    def _rescale(self, p, lr, decay):
        p_norm, g_norm = p.norm(), p.grad.norm()
        if p_norm == 0 or g_norm == 0:
            return
        local = self.eta * p_norm / (g_norm + decay * p_norm + self.eps)
        if self.clip:
            local = torch.clamp(local / lr, max=1.0)
        p.grad.add_(p, alpha=decay).mul_(local)


def lars_sgd(parameters, lr=0.3, momentum=0.9, nesterov=True, weight_decay=1e-4, eta=0.005):
    sgd = torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return Lars(sgd, eta=eta)
