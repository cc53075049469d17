import unittest

from shop.cart import Cart, Item


class CartTest(unittest.TestCase):
    def test_empty_cart_is_free(self):
        self.assertEqual(Cart().total(), 0)

    def test_subtotal_sums_quantities(self):
        cart = Cart()
        cart.add(Item("tea", 450, 2))
        cart.add(Item("cup", 1200))
        self.assertEqual(cart.subtotal(), 2100)

    def test_negative_quantity_is_refused(self):
        with self.assertRaises(ValueError):
            Item("tea", 450, -1).total()
