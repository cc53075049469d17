import unittest

from shop.cart import Cart, Item


class PricingTest(unittest.TestCase):
    def setUp(self):
        self.cart = Cart([Item("kettle", 4000)])

    def test_discount_then_tax(self):
        self.assertEqual(self.cart.total(discount_percent=25, tax_percent=20), 3600)

    def test_discount_out_of_range(self):
        with self.assertRaises(ValueError):
            self.cart.total(discount_percent=120)
