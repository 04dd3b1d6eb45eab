# Worked solution of notebook 03's exercise: one training step on a batch of pairs.
import torch


def training_step(model, batch, loss_fn, optimizer):
    x1, x2, y = batch
    optimizer.zero_grad()                                     # forget the previous batch's gradients
    e1, e2 = model(torch.cat([x1, x2])).split(len(x1))        # both images of every pair in ONE forward pass
    loss = loss_fn(e1, e2, y)                                 # the mean over the pairs of the batch
    loss.backward()                                           # gradients of the loss w.r.t. every weight
    optimizer.step()                                          # move the weights against their gradients
    return loss.item()
