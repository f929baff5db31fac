"""What the tests run against and with: real servers, the notebook runner. Not part of the micdm package."""
