"""The models of the README's plot, made with:

    gradhealth probe docs/plot_models.py:tanh_rnn docs/plot_models.py:lstm_forget_bias_2 --seq-len 100 \
        --plot docs/rnn-vs-lstm.png
"""

from pytest_gradhealth import reference


def tanh_rnn():
    """A vanilla tanh RNN at PyTorch's default initialisation, input 32, hidden 64."""
    return reference.rnn(32, 64)


def lstm_forget_bias_2():
    """An LSTM of the same sizes with its forget-gate bias raised to 2."""
    return reference.lstm(32, 64, forget_bias=2.0)
