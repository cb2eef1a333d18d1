"""The EMP-SSL loss (methods.md; plugins/objectives/emp_ssl/coding_rate.hpp computes the same):
L = invariance_weight * (-D) + tcr_weight * (-(1/n) sum_i R(Z_i)) on embeddings laid out [crops n, images B, d]."""
import torch
import torch.nn.functional as F


def total_coding_rate(z, eps):
    """R(Z_i) = 1/2 logdet(I + d/(B eps) Z_i^T Z_i) for each crop i of z [n, B, d], in the smaller of the
    B x B (Sylvester) and d x d forms, by Cholesky: 1/2 logdet = sum log diag(L)."""
    _, batch, dim = z.shape
    gram = z @ z.transpose(1, 2) if batch < dim else z.transpose(1, 2) @ z
    identity = torch.eye(gram.shape[-1], dtype=z.dtype, device=z.device)
    chol = torch.linalg.cholesky(identity + (dim / (batch * eps)) * gram)
    return chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def total_coding_rate_full(z, eps):
    """The same R(Z_i), as EMP-SSL's published code writes it: a d x d logdet for each crop in turn."""
    _, batch, dim = z.shape
    identity = torch.eye(dim, dtype=z.dtype, device=z.device)
    return torch.stack([torch.logdet(identity + (dim / (batch * eps)) * zi.T @ zi) / 2 for zi in z])


def invariance(z):
    """D = mean over crops and images of cos(z_i^b, zbar^b), zbar the mean over crops (not renormalised)."""
    return F.cosine_similarity(z, z.mean(0, keepdim=True).expand_as(z), dim=2).mean()


def emp_ssl_loss(embeddings, crops, eps=0.2, invariance_weight=200.0, tcr_weight=1.0, full_logdet=False):
    z = embeddings.view(crops, -1, embeddings.shape[1])
    rate = (total_coding_rate_full if full_logdet else total_coding_rate)(z, eps).mean()
    return -invariance_weight * invariance(z) - tcr_weight * rate
