"""The FIFO memory bank: progressive filling, wrap-around, overflow, checkpoints, dtype moves."""
import pytest
import torch

from common.memory_bank import MemoryBank


def rows(start, stop, dim=2):
    """Row r is [r, r, ...]: a bank's content is then readable as a set of row ids."""
    return torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, dim)


def ids(bank):
    return sorted(bank.get()[:, 0].long().tolist())


def test_starts_empty_and_fills_progressively():
    bank = MemoryBank(5, 2)
    assert len(bank) == 0 and bank.get().shape == (0, 2)
    bank.add(rows(0, 2))
    assert len(bank) == 2 and torch.equal(bank.get(), rows(0, 2))
    bank.add(rows(2, 4))
    assert len(bank) == 4 and torch.equal(bank.get(), rows(0, 4))  # oldest first while filling


def test_wraps_around_and_drops_the_oldest():
    bank = MemoryBank(5, 2)
    bank.add(rows(0, 3))
    bank.add(rows(3, 7))  # runs past the end: rows 5, 6 overwrite slots 0, 1
    assert len(bank) == 5 and ids(bank) == [2, 3, 4, 5, 6]
    assert int(bank.ptr) == 2
    assert bank.get()[:2, 0].tolist() == [5.0, 6.0]  # storage order, oldest at ptr
    bank.add(rows(7, 8))  # full: one more row drops exactly the oldest one (row 2)
    assert ids(bank) == [3, 4, 5, 6, 7]


def test_batch_larger_than_the_bank_keeps_its_last_rows():
    bank = MemoryBank(5, 2)
    bank.add(rows(0, 2))
    bank.add(rows(10, 22))
    assert len(bank) == 5 and ids(bank) == [17, 18, 19, 20, 21]
    bank.add(rows(30, 31))  # still FIFO afterwards: 17 is the oldest
    assert ids(bank) == [18, 19, 20, 21, 30]


def test_exactly_full_batch_replaces_everything():
    bank = MemoryBank(3, 2)
    bank.add(rows(0, 2))
    bank.add(rows(5, 8))
    assert ids(bank) == [5, 6, 7]
    bank.add(rows(9, 10))
    assert ids(bank) == [6, 7, 9]


def test_state_dict_round_trip_restores_rows_pointer_and_fill():
    bank = MemoryBank(4, 2)
    bank.add(rows(0, 3))
    state = bank.state_dict()
    assert set(state) == {"rows", "ptr", "count"}
    restored = MemoryBank(4, 2)
    restored.load_state_dict(state)
    assert len(restored) == 3 and int(restored.ptr) == 3
    assert torch.equal(restored.get(), bank.get())
    for b in (bank, restored):  # and both continue identically
        b.add(rows(3, 6))
    assert torch.equal(restored.get(), bank.get()) and ids(bank) == [2, 3, 4, 5]


def test_moves_with_to_dtype_and_accepts_any_input_dtype():
    bank = MemoryBank(3, 2).to(torch.float64)
    assert bank.rows.dtype == torch.float64 and bank.ptr.dtype == torch.long
    bank.add(rows(0, 2).to(torch.bfloat16))
    assert bank.get().dtype == torch.float64 and ids(bank) == [0, 1]


def test_add_detaches_and_get_returns_a_copy():
    bank = MemoryBank(3, 2)
    x = rows(0, 2).requires_grad_()
    bank.add(x * 2)
    out = bank.get()
    assert not out.requires_grad
    out.zero_()
    assert ids(bank) == [0, 2]


def test_rejects_wrong_width():
    with pytest.raises(ValueError):
        MemoryBank(3, 2).add(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        MemoryBank(0, 2)
