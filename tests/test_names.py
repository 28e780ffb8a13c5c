import errno

import pytest

from repofs.errors import RepofsError
from repofs.names import check_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["vm1", "a", "A.b_c-d", "x" * 128, "0", "-x"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 129, "sp ace", "é", "a:b"])
def test_invalid_names_are_einval(name):
    with pytest.raises(RepofsError) as info:
        check_name(name)
    assert info.value.errno == errno.EINVAL
