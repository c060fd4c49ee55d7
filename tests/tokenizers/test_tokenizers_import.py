import subprocess
import sys

import pytest

import fmmm.tokenizers


def test_importing_the_tokenizers_package_does_not_import_torch():
    code = "import sys, fmmm.tokenizers; assert 'torch' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("name", fmmm.tokenizers.__all__)
def test_every_exported_name_resolves_lazily(name):
    assert getattr(fmmm.tokenizers, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute"):
        fmmm.tokenizers.NotATokenizer  # noqa: B018
