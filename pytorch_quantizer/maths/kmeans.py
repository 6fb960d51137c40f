"""k-means weight quantization (scikit-learn): 2^M centroids per tensor or per output channel,
each weight replaced by its nearest centroid; the codes are the centroid indices."""
from __future__ import annotations

import numpy as np
import torch

from pytorch_quantizer.maths.primitives import channels_first


def kmeans_rows(rows: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    values = np.empty_like(rows)
    codes = np.empty(rows.shape, dtype=np.int64)
    for index, row in enumerate(rows):
        distinct = np.unique(row)
        if len(distinct) <= clusters:
            codes[index] = np.searchsorted(distinct, row)
            values[index] = row
            continue
        fitted = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(row.reshape(-1, 1).astype(np.float64))
        centroids = fitted.cluster_centers_.ravel()
        order = np.argsort(centroids)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        codes[index] = rank[fitted.labels_]
        values[index] = centroids[fitted.labels_]
    return values, codes


def kmeans_quantize(weight: torch.Tensor, bits: int, per_channel: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantized weight, integer codes sorted by centroid value) with 2^bits clusters."""
    axis = 0 if per_channel else None
    rows = channels_first(weight.detach().cpu().double(), axis).numpy()
    values, codes = kmeans_rows(rows, 2**bits, seed)
    # axis 0 (or a single row) makes the (C, N) view a plain reshape, so reshaping back inverts it
    quantized = torch.from_numpy(values).reshape(weight.shape).to(weight.device, weight.dtype)
    return quantized, torch.from_numpy(codes).reshape(weight.shape).to(weight.device)
