# Worked solution of notebook 02's exercise: the three losses, written with torch operations.
# d = ||e1 - e2|| is the distance of a pair; y = 1 marks a positive pair (same category), y = 0 a negative one.
import torch


def single_margin_loss(e1, e2, y, margin):
    d = (e1 - e2).norm(dim=1)
    positive = 0.5 * d ** 2                                   # pulled all the way to d = 0
    negative = 0.5 * torch.clamp(margin - d, min=0) ** 2      # pushed out to the margin m
    return (y * positive + (1 - y) * negative).mean()         # the mean over ALL pairs of the batch


def double_margin_loss(e1, e2, y, pos_margin, neg_margin):
    d = (e1 - e2).norm(dim=1)
    positive = 0.5 * torch.clamp(d - pos_margin, min=0) ** 2  # silent once closer than m1
    negative = 0.5 * torch.clamp(neg_margin - d, min=0) ** 2  # silent once farther than m2
    return (y * positive + (1 - y) * negative).mean()


def triplet_loss(anchor, positive, negative, margin):
    d_ap = (anchor - positive).norm(dim=1)
    d_an = (anchor - negative).norm(dim=1)
    return torch.clamp(d_ap - d_an + margin, min=0).mean()   # the negative must be m farther than the positive
