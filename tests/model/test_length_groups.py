"""Which captions run together under a fused backend: only splits that pay for their extra forwards."""

import torch

from clipx.model.length_groups import FORWARD_COST, group_cost, length_groups


def shapes(lengths):
    lengths = torch.tensor(lengths)
    return sorted((len(g), int(lengths[g].max())) for g in length_groups(lengths))


def test_equal_lengths_or_a_little_padding_stay_one_batch():
    assert shapes([14] * 16) == [(16, 14)]
    assert shapes([9, 10, 11, 12, 13, 14] * 3) == [(18, 14)]  # 25% padding: not worth a second forward


def test_heavy_padding_splits():
    assert shapes([4] * 40 + [60] * 4) == [(4, 60), (40, 4)]


def test_the_grouping_is_the_cheapest_and_never_costs_more_than_one_batch():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 40, (1,), generator=g))
        lengths = torch.randint(2, 78, (n,), generator=g)
        groups = length_groups(lengths)
        assert sorted(torch.cat(groups).tolist()) == list(range(n))  # every caption once
        cost = group_cost(lengths, groups)
        assert cost <= FORWARD_COST + n * int(lengths.max())
        order = lengths.argsort()  # brute force over the splits of the sorted captions (small n only)
        if n <= 10:
            best = min(group_cost(lengths, [order[i:j] for i, j in zip((0, *cuts), (*cuts, n))])
                       for mask in range(2 ** (n - 1))
                       for cuts in [tuple(k + 1 for k in range(n - 1) if mask >> k & 1)])
            assert cost == best
